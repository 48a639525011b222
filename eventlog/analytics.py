"""Answers to the everyday questions, read from eventlog's own tables: how many calls,
how many failed, how many tokens, how slow, which runs and steps went wrong.

Every function takes a :class:`~eventlog.Database` and returns typed, frozen rows, the
same on PostgreSQL and SQLite for the same data. Three rules make them the same:

- Percentiles are exact, nearest-rank (PostgreSQL's ``percentile_disc``): the value at
  rank ``ceil(p * n)`` of the sorted samples. SQLite has no ordered-set aggregates, so
  there the samples are read once and ranked in Python: the value at the smallest rank
  with ``rank >= p * n``, the same double arithmetic as PostgreSQL's. Few samples make a
  high percentile noise, so p95 is ``None`` below :data:`MIN_SAMPLES` ``[0.95]`` (20)
  samples and p99 below 100.
- SQL returns only integers (counts, sums, ranks, epoch microseconds); ratios, averages
  and rates are computed here in Python, so no float rounding differs between backends.
  Rows are sorted here too, by code point (collations differ).
- Time buckets are computed in UTC from epoch seconds. ``minute`` and ``hour`` buckets
  stay UTC; ``day``, ``week`` (from Monday) and ``month`` buckets are folded into local
  time when ``tz`` is given: the UTC offset of each row is a ``CASE`` over the offset
  changes inside the window (found with :mod:`zoneinfo`), so a 23- or 25-hour day is one
  bucket. Buckets without rows are filled with zero rows.

Only LLM calls (``event_type = 'chronicle_llm_request'``) count in :func:`usage` and
:func:`latency`. Longer windows are read from the rollup (see :mod:`eventlog.rollup`):
whole UTC days from the daily tables, the other whole hours from the hourly ones, the
partial hours at the ends from the raw rows, with the same results; percentiles over
more than seven days come from its histogram, marked approximate.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any, Final, Literal, TypeAlias, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    Float,
    Integer,
    Select,
    Subquery,
    Table,
    Text,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    null,
    select,
    true,
    union_all,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Row
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.elements import KeyedColumnElement

from eventlog import sqlite
from eventlog._checks import positive_int
from eventlog.database import Database
from eventlog.exceptions import DatabaseError
from eventlog.rollup import latency_bin
from eventlog.schema import (
    LATENCY_BIN_EDGES,
    ROLLUP_KEYS,
    USAGE_SUM_COLUMNS,
    USER_ROLLUP_KEYS,
    chronicle_events,
    chronicle_runs,
    chronicle_steps,
    eventlog_rollup_active_users,
    eventlog_rollup_daily,
    eventlog_rollup_hourly,
    eventlog_rollup_users_daily,
    eventlog_rollup_users_hourly,
)
from eventlog.transient import is_transient
from eventlog.types import UTCDateTime, UUIDType

__all__ = [
    "GROUPS",
    "LATENCY_KEYS",
    "LLM_CALL",
    "MIN_SAMPLES",
    "PERCENTILES",
    "STATS_KEYS",
    "Bucket",
    "ErrorCount",
    "LatencyRow",
    "LatencyStats",
    "RunDetail",
    "RunDuration",
    "RunRow",
    "RunStatusCount",
    "StepFailures",
    "StepRow",
    "UsageRow",
    "auto_bucket",
    "flat_record",
    "get_run",
    "iso_utc",
    "latency",
    "latency_for",
    "list_runs",
    "parse_time",
    "run_durations",
    "run_status_counts",
    "stats_records",
    "step_failures",
    "top_errors",
    "usage",
    "usd_text",
]

LLM_CALL: Final = "chronicle_llm_request"
"""The ``event_type`` of an LLM call: the only rows :func:`usage` counts as requests."""

GROUPS: Final[Mapping[str, str]] = {
    "model": "model",
    "provider": "provider",
    "application": "application",
    "environment": "environment",
    "organization": "organization_id",
    "project": "project_id",
    "user": "user_id",
    "workflow": "workflow_name",
}
"""What ``by=`` accepts, and the ``chronicle_events`` column each name stands for."""

Bucket: TypeAlias = Literal["minute", "hour", "day", "week", "month"]
_BUCKETS: Final = frozenset(get_args(Bucket))

PERCENTILES: Final = (0.5, 0.75, 0.9, 0.95, 0.99)
EXACT_PERCENTILE_WINDOW: Final = timedelta(days=7)
"""Percentiles over windows up to this long are exact, from the raw rows; longer ones
come from the rollup's histogram when the grouping and filters allow (see
:class:`LatencyStats`)."""
ROLLUP_MIN_WINDOW: Final = timedelta(hours=2)
""":func:`usage` reads the whole hours of windows longer than this from the rollup when
the grouping and filters allow it (with ``source="auto"``); the results are the same."""
Source: TypeAlias = Literal["auto", "raw", "rollup"]
MIN_SAMPLES: Final[Mapping[float, int]] = {0.95: 20, 0.99: 100}
"""Below this many samples a percentile is ``None``: it would describe one outlier."""

TimeArg: TypeAlias = datetime | str | None
Where: TypeAlias = Mapping[str, Any]

# Window presets are a number and a unit: 15m, 1h, 24h, 7d, 30d, 90d, 2w.
_RELATIVE = re.compile(r"^\s*(\d+)\s*(m|h|d|w)\s*$")
_UNITS: Final = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_MAX_BUCKETS: Final = 10_000
_EPOCH_DAY: Final = date(1970, 1, 1)
_EPOCH_MONDAY: Final = date(1969, 12, 29)
_FIXED_WIDTH: Final = {"minute": 60, "hour": 3600}
_TEXT_KEY: Final = {"hour": 13, "day": 10, "month": 7}  # SQLite: the time text's prefix

events = chronicle_events.c
runs = chronicle_runs.c
steps = chronicle_steps.c


# -- rows --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Traffic of one group in one bucket (or the whole window when not bucketed).

    ``start``/``end`` are the bucket's bounds in UTC (the window's when not bucketed);
    ``group`` maps each ``by`` name to its value. Rates are fractions of ``requests``
    (``None`` without requests); ``retried`` counts calls retried at least once and
    ``retries`` the retries. ``output_tokens_per_second`` is completion tokens over
    request latency, of the calls that have both.

    Tokens follow one counting rule (see :mod:`eventlog.usage`): ``prompt_tokens``
    includes the cache-read and cache-write tokens, ``completion_tokens`` the reasoning
    tokens. ``cost_usd`` is the exact cost of the ``priced_requests``; the
    ``unpriced_requests`` (no price for the model, or no token counts) and their
    ``unpriced_tokens`` are reported apart, never as $0.
    """

    start: datetime
    end: datetime
    group: Mapping[str, str | None] = field(hash=False)
    requests: int
    errors: int
    rate_limited: int
    retried: int
    retries: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    users: int
    output_tokens_per_second: float | None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    priced_requests: int = 0
    unpriced_requests: int = 0
    unpriced_tokens: int = 0

    @property
    def cost_per_1k_requests(self) -> Decimal | None:
        """Cost per thousand priced requests (``None`` without any)."""
        if not self.priced_requests:
            return None
        return (self.cost_usd * 1000 / self.priced_requests).quantize(_NANO_USD)

    @property
    def error_rate(self) -> float | None:
        return _ratio(self.errors, self.requests)

    @property
    def rate_limited_rate(self) -> float | None:
        return _ratio(self.rate_limited, self.requests)

    @property
    def retry_rate(self) -> float | None:
        return _ratio(self.retried, self.requests)


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Milliseconds over ``count`` samples; exact nearest-rank percentiles, ``None`` when
    there are too few samples (see :data:`MIN_SAMPLES`).

    ``approximate`` percentiles come from the rollup's histogram (windows over
    :data:`EXACT_PERCENTILE_WINDOW`): each is the top of the histogram bin holding the
    nearest-rank sample, and ``bin_width`` (1.19) bounds the error: the exact value is
    between ``p / bin_width`` and ``p``.
    """

    count: int
    avg: float | None
    p50: int | None
    p75: int | None
    p90: int | None
    p95: int | None
    p99: int | None
    approximate: bool = False
    bin_width: float | None = None


_NO_SAMPLES: Final = LatencyStats(0, None, None, None, None, None, None)


@dataclass(frozen=True, slots=True)
class LatencyRow:
    """Latency of one group in one bucket: ``request`` (the provider's answer),
    ``total`` (with retries and waiting) and ``ttft`` (time to first token).

    Over windows longer than :data:`EXACT_PERCENTILE_WINDOW` the request percentiles are
    approximate (from the rollup) and total and TTFT have count and average only."""

    start: datetime
    end: datetime
    group: Mapping[str, str | None] = field(hash=False)
    request: LatencyStats
    total: LatencyStats
    ttft: LatencyStats = _NO_SAMPLES


@dataclass(frozen=True, slots=True)
class RunStatusCount:
    """How many runs of ``workflow`` (the run's name) are in ``status``."""

    workflow: str | None
    status: str
    runs: int


@dataclass(frozen=True, slots=True)
class RunDuration:
    """Durations (start to last update, in ms) of the ended runs of one workflow."""

    workflow: str | None
    duration: LatencyStats


@dataclass(frozen=True, slots=True)
class RunRow:
    """One run with its step counts and the LLM calls logged under it (their exact cost,
    and how many had no price); ``duration_ms`` is ``None`` while it is started."""

    id: uuid.UUID
    workflow: str | None
    status: str
    application: str | None
    environment: str | None
    created_at: datetime
    updated_at: datetime
    duration_ms: int | None
    steps: int
    failed_steps: int
    llm_calls: int = 0
    cost_usd: Decimal = Decimal(0)  # of the run's priced LLM calls
    unpriced_calls: int = 0


@dataclass(frozen=True, slots=True)
class StepRow:
    """One step of a run, placed on the run's timeline: ``offset_ms`` from the run's
    start (``None`` when the step's start was never logged)."""

    id: uuid.UUID
    type: str | None
    name: str | None
    status: str
    parent_step: uuid.UUID | None
    start_time: datetime | None
    end_time: datetime | None
    offset_ms: int | None
    duration_ms: int | None


@dataclass(frozen=True, slots=True)
class RunDetail:
    """A run, its steps in start order, and the LLM calls logged under it."""

    run: RunRow
    steps: Sequence[StepRow]
    llm_calls: int


@dataclass(frozen=True, slots=True)
class StepFailures:
    """Steps of one type and name, and how many ended in ``error``."""

    type: str | None
    name: str | None
    steps: int
    failed: int

    @property
    def failure_rate(self) -> float | None:
        return _ratio(self.failed, self.steps)


@dataclass(frozen=True, slots=True)
class ErrorCount:
    """LLM calls that failed with one error type and message (its first 200 characters);
    ``last_seen`` is the latest in the window."""

    type: str | None
    message: str | None
    count: int
    last_seen: datetime


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


_NANO_USD: Final = Decimal("0.000000001")


# -- arguments ---------------------------------------------------------------------------


def parse_time(value: TimeArg, name: str, *, now: datetime, tz: tzinfo | None = None) -> datetime:
    """``value`` as an aware UTC datetime: a datetime (naive is UTC), ``"now"``, a span
    back from ``now`` (``"1h"``, ``"24h"``, ``"7d"``, ``"30d"``, ``"90d"``, any ``N``
    with ``m``/``h``/``d``/``w``), or ISO 8601 text (naive is in ``tz``, else UTC)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "now"):
        return now
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, str):
        relative = _RELATIVE.match(value)
        if relative:
            return now - timedelta(seconds=int(relative[1]) * _UNITS[relative[2]])
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=tz or UTC)
            return parsed.astimezone(UTC)
    raise ValueError(
        f"{name} must be a datetime, a span like 24h or 7d, or an ISO 8601 time; got {value!r}"
    )


def _zone(tz: str | tzinfo | None) -> tzinfo | None:
    if tz is None or isinstance(tz, tzinfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(
            f"tz must be an IANA time zone name like Europe/Berlin, got {tz!r}"
        ) from None


def _window(
    since: TimeArg, until: TimeArg, now: datetime | None, zone: tzinfo | None
) -> tuple[datetime, datetime]:
    now = datetime.now(UTC) if now is None else parse_time(now, "now", now=now)
    start = parse_time(since, "since", now=now, tz=zone)
    end = parse_time(until, "until", now=now, tz=zone)
    if start >= end:
        raise ValueError(
            f"since must be before until, got {start.isoformat()} >= {end.isoformat()}"
        )
    return start, end


def _group_names(by: str | Iterable[str]) -> tuple[str, ...]:
    names = (by,) if isinstance(by, str) else tuple(by)
    aliases = {column: name for name, column in GROUPS.items()}
    result: list[str] = []
    for name in names:
        name = aliases.get(name, name)
        if name not in GROUPS:
            raise ValueError(f"by must name columns of {', '.join(GROUPS)}; got {name!r}")
        if name not in result:
            result.append(name)
    return tuple(result)


def auto_bucket(since: datetime, until: datetime) -> Bucket:
    """A bucket size giving between about 24 and 200 points over the window."""
    span = until - since
    if span <= timedelta(hours=3):
        return "minute"
    if span <= timedelta(days=7):
        return "hour"
    if span <= timedelta(days=180):
        return "day"
    return "week" if span <= timedelta(days=3 * 365) else "month"


# -- SQL building blocks -----------------------------------------------------------------


def _epoch_us(db: Database, column: ColumnElement[Any]) -> ColumnElement[int]:
    """Microseconds since 1970 UTC, exactly, as an integer on both backends.

    SQLite stores ``YYYY-MM-DD HH:MM:SS.ffffff``: whole seconds from ``strftime('%s')``
    of the text without its fraction (``%s`` rounds ``59.9995`` up to the next second)
    and the six fraction digits from the text; PostgreSQL's ``extract`` is exact numeric.
    """
    if db.dialect == "postgresql":
        return cast(func.extract("epoch", column) * 1_000_000, BigInteger)
    seconds = cast(func.strftime("%s", func.substr(column, 1, 19)), Integer)
    return seconds * 1_000_000 + cast(func.substr(column, 21, 6), Integer)


def _utc_offsets(zone: tzinfo, start: datetime, end: datetime) -> tuple[tuple[datetime, int], ...]:
    """``(from, offset seconds)`` for each UTC offset ``zone`` has in ``[start, end)``:
    hourly probes, and a bisection to the second where the offset changes (a query asks
    for the same window several times: remembered, for zones that can be)."""
    if isinstance(zone, timezone):  # UTC, or another fixed offset
        delta = zone.utcoffset(None)
        return ((start.replace(microsecond=0), int(delta.total_seconds())),)
    try:
        hash(zone)
    except TypeError:  # some tzinfo classes (dateutil's) are not hashable
        return _probe_offsets(zone, start, end)
    return _cached_offsets(zone, start, end)


@functools.lru_cache(maxsize=64)
def _cached_offsets(
    zone: tzinfo, start: datetime, end: datetime
) -> tuple[tuple[datetime, int], ...]:
    return _probe_offsets(zone, start, end)


def _probe_offsets(
    zone: tzinfo, start: datetime, end: datetime
) -> tuple[tuple[datetime, int], ...]:

    def offset(at: datetime) -> int:
        delta = at.astimezone(zone).utcoffset()
        return 0 if delta is None else int(delta.total_seconds())

    # Offsets change on whole seconds: searching from one finds the change exactly.
    start = start.replace(microsecond=0)
    changes = [(start, offset(start))]
    probe = start
    step = timedelta(hours=1)
    while probe < end:
        after = min(probe + step, end)
        if offset(after) != changes[-1][1]:
            low, high = probe, after  # offset(low) is the old one, offset(high) the new
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                if offset(middle) == changes[-1][1]:
                    low = middle
                else:
                    high = middle
            changes.append((high, offset(high)))
        probe = after
    return tuple(changes)


@dataclass(frozen=True, slots=True)
class _Buckets:
    """How rows fall into buckets: the SQL key, and the same key and bounds in Python."""

    size: Bucket
    zone: tzinfo

    def key_sql(
        self,
        db: Database,
        since: datetime,
        until: datetime,
        column: ColumnElement[Any] = events.created_at,
    ) -> ColumnElement[int]:
        if self.size in _TEXT_KEY and (
            self.size == "hour" or all(off == 0 for _, off in _utc_offsets(self.zone, since, until))
        ):
            # A UTC hour, day or month: on SQLite, which keeps times as ISO text, a prefix
            # of it; on PostgreSQL date_trunc. Both far cheaper per row than the epoch
            # arithmetic below (numeric on PostgreSQL); see :meth:`from_sql`.
            if db.dialect == "sqlite":
                return func.substr(column, 1, _TEXT_KEY[self.size])
            return func.date_trunc(self.size, func.timezone("UTC", column))
        seconds = _epoch_us(db, column) // 1_000_000
        if self.size in _FIXED_WIDTH:
            return seconds // _FIXED_WIDTH[self.size]
        offsets = _utc_offsets(self.zone, since, until)
        shift: ColumnElement[int] = literal(offsets[0][1], Integer)
        if len(offsets) > 1:
            shift = case(
                *(
                    (column < literal(later_from, UTCDateTime), literal(off, Integer))
                    for (_, off), (later_from, _) in itertools.pairwise(offsets)
                ),
                else_=literal(offsets[-1][1], Integer),
            )
        local = seconds + shift
        days = local // 86400
        if self.size == "day":
            return days
        if self.size == "week":
            return (days + 3) // 7  # 1970-01-01 was a Thursday: weeks from Monday
        if db.dialect == "postgresql":
            stamp = func.timezone("UTC", func.to_timestamp(local))
            year = cast(func.extract("year", stamp), Integer)
            month = cast(func.extract("month", stamp), Integer)
        else:
            year = cast(func.strftime("%Y", local, "unixepoch"), Integer)
            month = cast(func.strftime("%m", local, "unixepoch"), Integer)
        return year * 12 + month - 1

    def from_sql(self, value: Any) -> int:
        """The key :meth:`key_sql` computed (a text prefix of the time on SQLite, a
        truncated time on PostgreSQL, or the key itself)."""
        if isinstance(value, datetime):  # PostgreSQL's date_trunc: a UTC wall time
            if self.size == "hour":
                return int(value.replace(tzinfo=UTC).timestamp()) // 3600
            if self.size == "day":
                return (value.date() - _EPOCH_DAY).days
            return value.year * 12 + value.month - 1
        if not isinstance(value, str):
            return int(value)
        if self.size == "hour":
            return (
                int(datetime.fromisoformat(f"{value[:10]} {value[11:13]}:00+00:00").timestamp())
                // 3600
            )
        if self.size == "day":
            return (date.fromisoformat(value[:10]) - _EPOCH_DAY).days
        return int(value[:4]) * 12 + int(value[5:7]) - 1

    def key(self, at: datetime) -> int:
        if self.size in _FIXED_WIDTH:
            return int(at.timestamp()) // _FIXED_WIDTH[self.size]
        local = at.astimezone(self.zone).date()
        if self.size == "day":
            return (local - _EPOCH_DAY).days
        if self.size == "week":
            return (local - _EPOCH_MONDAY).days // 7
        return local.year * 12 + local.month - 1

    def start(self, key: int) -> datetime:
        if self.size in _FIXED_WIDTH:
            return datetime.fromtimestamp(key * _FIXED_WIDTH[self.size], UTC)
        if self.size == "day":
            day = _EPOCH_DAY + timedelta(days=key)
        elif self.size == "week":
            day = _EPOCH_MONDAY + timedelta(days=7 * key)
        else:
            day = date(key // 12, key % 12 + 1, 1)
        return datetime.combine(day, time(), tzinfo=self.zone).astimezone(UTC)


def _make_buckets(
    bucket: str | None, zone: tzinfo | None, since: datetime, until: datetime
) -> _Buckets | None:
    if bucket is None:
        return None
    if bucket not in _BUCKETS:
        raise ValueError(
            f"bucket must be one of {', '.join(sorted(_BUCKETS))} or None; got {bucket!r}"
        )
    buckets = _Buckets(bucket, zone or UTC)  # type: ignore[arg-type]
    count = buckets.key(until - timedelta(microseconds=1)) - buckets.key(since) + 1
    if count > _MAX_BUCKETS:
        raise ValueError(
            f"bucket {bucket!r} cuts this window into {count} buckets; at most "
            f"{_MAX_BUCKETS}: choose a larger bucket or a shorter window"
        )
    return buckets


_JSON_COLUMNS: Final = frozenset(
    {"chat_request", "chat_response", "error", "meta", "response_meta", "created_at"}
)


def _coerce(name: str, column: KeyedColumnElement[Any], value: Any) -> Any:
    """A ``where`` value of the CLI's text as the column's type."""
    if not isinstance(value, str):
        return value
    try:
        if isinstance(column.type, Integer):
            return int(value)
        if isinstance(column.type, Boolean):
            flag = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
            return flag[value.strip().lower()]
        if isinstance(column.type, UUIDType):
            return uuid.UUID(value)
    except (ValueError, KeyError):
        raise ValueError(
            f"where[{name!r}] must be a {column.type.__class__.__name__.lower()}, got {value!r}"
        ) from None
    return value


def _json_text(db: Database, column: ColumnElement[Any], keys: Sequence[str]) -> ColumnElement[str]:
    """The text of the JSON value at ``keys`` in ``column``, the same on both backends
    for strings, numbers and booleans."""
    if db.dialect == "postgresql":
        return func.jsonb_extract_path_text(column, *(literal(key) for key in keys))
    path = literal("$" + "".join(f'."{key}"' for key in keys))
    kind = func.json_type(column, path)
    return case(
        (kind == "true", literal("true")),
        (kind == "false", literal("false")),
        else_=cast(func.json_extract(column, path), chronicle_events.c.model.type),
    )


def _json_value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _where_events(db: Database, where: Where) -> list[ColumnElement[bool]]:
    """Conditions for ``where={"model": "gpt-4o", "meta.team": "search"}``: a group
    name or any scalar column of ``chronicle_events``, or ``meta.KEY[.KEY...]``; a list
    value means any of, ``None`` means NULL."""
    if not isinstance(where, Mapping):
        raise ValueError(f"where must be a mapping of column to value, got {where!r}")
    conditions: list[ColumnElement[bool]] = []
    for name, value in where.items():
        if not isinstance(name, str):
            raise ValueError(f"where keys must be strings, got {name!r}")
        values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
        if name.startswith("meta."):
            keys = name[len("meta.") :].split(".")
            if not all(keys) or any('"' in key for key in keys):
                raise ValueError(f"where key {name!r} must be meta.KEY with a non-empty KEY")
            expr = _json_text(db, events.meta, keys)
            conditions.append(
                _any_of(expr, [None if v is None else _json_value_text(v) for v in values])
            )
            continue
        column_name = GROUPS.get(name, name)
        if column_name not in chronicle_events.c or column_name in _JSON_COLUMNS:
            raise ValueError(
                f"where key {name!r} must be one of {', '.join(GROUPS)}, a column of "
                "chronicle_events, or meta.KEY"
            )
        column = chronicle_events.c[column_name]
        conditions.append(_any_of(column, [_coerce(name, column, v) for v in values]))
    return conditions


def _any_of(expr: ColumnElement[Any], values: Sequence[Any]) -> ColumnElement[bool]:
    present = [v for v in values if v is not None]
    options: list[ColumnElement[bool]] = []
    if present:
        options.append(expr == present[0] if len(present) == 1 else expr.in_(present))
    if len(present) < len(values):
        options.append(expr.is_(None))
    if not options:
        return false()
    return options[0] if len(options) == 1 else options[0] | options[1]


async def _percentiles(
    db: Database,
    base: Subquery,
    keys: Sequence[str],
    values: Sequence[str],
    doing: str,
) -> list[Mapping[str, Any]]:
    """Per group of ``keys`` of ``base``: ``{v}_n`` (samples), ``{v}_sum`` and ``{v}_p50``
    ... for each column ``v`` of ``values``; nearest-rank on both backends.

    PostgreSQL computes them itself (``percentile_disc``). SQLite has no ordered-set
    aggregates, and its window-function form sorts the rows once per value: each
    group's samples are read once instead and ranked here, with the same double
    arithmetic (the value at the smallest rank ``r`` with ``r >= p * n``).
    """
    group = [base.c[k] for k in keys]
    if db.dialect == "postgresql":
        columns: list[ColumnElement[Any]] = list(group)
        for v in values:
            sample = base.c[v]
            columns += [func.count(sample).label(f"{v}_n"), func.sum(sample).label(f"{v}_sum")]
            # One ordered-set aggregate for every fraction: one sort of the samples.
            fractions = postgresql.array([literal(p, Float) for p in PERCENTILES])
            columns.append(func.percentile_disc(fractions).within_group(sample).label(f"{v}_ps"))
        rows: list[Mapping[str, Any]] = []
        for fetched in await _fetch(db, select(*columns).group_by(*group), doing):
            summary = dict(fetched)
            for v in values:
                picked = summary.pop(f"{v}_ps")
                for i, p in enumerate(PERCENTILES):
                    summary[f"{v}_p{_pname(p)}"] = None if picked is None else picked[i]
            rows.append(summary)
        return rows
    # SQLite: each group's samples as one text (``group_concat``), parsed and sorted
    # here: a few strings instead of a Python row per call (42,680 rows cost ~150 ms).
    columns = list(group)
    for v in values:
        sample = base.c[v]
        columns += [
            func.count(sample).label(f"{v}_n"),
            func.sum(sample).label(f"{v}_sum"),
            func.group_concat(sample).label(f"{v}_all"),
        ]
    result: list[Mapping[str, Any]] = []
    for row in await _fetch(db, select(*columns).group_by(*group), doing):
        record: dict[str, Any] = {k: row[k] for k in keys}
        for v in values:
            ranked = _samples(row[f"{v}_all"])
            n = len(ranked)
            record[f"{v}_n"] = n
            record[f"{v}_sum"] = row[f"{v}_sum"]
            for p in PERCENTILES:
                rank = max(1, math.ceil(p * n))  # the smallest rank r with r >= p * n
                record[f"{v}_p{_pname(p)}"] = ranked[rank - 1] if n else None
        result.append(record)
    return result


def _samples(text: str | None) -> list[Any]:
    """``group_concat``'s values, sorted (integers; a real imported by other means kept)."""
    if not text:
        return []
    parts = text.split(",")
    try:
        values: list[Any] = list(map(int, parts))
    except ValueError:
        values = [
            float(part) if "." in part or "e" in part.lower() else int(part) for part in parts
        ]
    values.sort()
    return values


def _pname(p: float) -> str:
    return f"{round(p * 100)}"


def _stats(row: Mapping[str, Any], v: str) -> LatencyStats:
    n = int(row.get(f"{v}_n") or 0)
    total = row.get(f"{v}_sum")

    def pick(p: float) -> int | None:
        if n == 0 or n < MIN_SAMPLES.get(p, 0):
            return None
        value = row.get(f"{v}_p{_pname(p)}")
        return None if value is None else int(value)

    return LatencyStats(
        count=n,
        avg=int(total or 0) / n if n else None,
        p50=pick(0.5),
        p75=pick(0.75),
        p90=pick(0.9),
        p95=pick(0.95),
        p99=pick(0.99),
    )


async def _fetch(db: Database, statement: Select[Any], doing: str) -> list[Mapping[str, Any]]:
    (found,) = await _fetch_each(db, [statement], doing)
    return found


async def _fetch_each(
    db: Database, statements: Sequence[Select[Any]], doing: str
) -> list[list[Mapping[str, Any]]]:
    """The rows of each statement, run one after the other on one connection."""
    return [[dict(row._mapping) for row in rows] for rows in await _rows(db, statements, doing)]


async def _rows(
    db: Database, statements: Sequence[Select[Any]], doing: str
) -> list[Sequence[Row[Any]]]:
    try:
        async with db.engine.connect() as conn:
            if len(statements) > 1:
                # One snapshot for all (the sums and the users of one report): a batch
                # committed between them must count in both or in neither. sqlite3
                # begins no transaction for a SELECT, so each read its own snapshot;
                # in one (deferred) transaction the first read fixes it for the rest.
                if db.dialect == "postgresql":
                    await conn.execution_options(isolation_level="REPEATABLE READ")
                elif not isinstance(db.engine.pool, StaticPool):
                    # (An in-memory database's one connection is every reader's: a
                    # transaction there would be theirs too, and theirs would refuse
                    # to begin inside it.)
                    await sqlite.begin(conn)
            if db.dialect == "postgresql":
                # These queries are short: compiling them to machine code (JIT, which
                # PostgreSQL's cost estimate turns on for a million rows) costs more
                # than it saves, 20-70 ms each as measured.
                await conn.exec_driver_sql("SET LOCAL jit = off")
            return [(await conn.execute(statement)).all() for statement in statements]
    except (SQLAlchemyError, OSError) as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        hint = ""
        if "no such table" in text or ('relation "' in text and "does not exist" in text):
            hint = ": run `eventlog migrate` to create eventlog's tables"
        raise DatabaseError(
            f"{doing} in {db.url} failed: {text}{hint}", transient=is_transient(err)
        ) from err


def _sort_key(value: Any) -> tuple[bool, Any]:
    return (value is not None, "" if value is None else value)


# -- usage and latency -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Spans:
    """How a window is read: raw rows for ``[since, first_hour)`` and
    ``[last_hour, until)``, hourly rollup rows for the whole hours outside
    ``[first_day, last_day)``, daily rollup rows for the whole UTC days inside it
    (``first_day == last_day``: none)."""

    first_hour: datetime
    last_hour: datetime
    first_day: datetime
    last_day: datetime

    def hour_spans(self) -> list[tuple[datetime, datetime]]:
        if self.first_day >= self.last_day:
            return [(self.first_hour, self.last_hour)]
        spans = [(self.first_hour, self.first_day), (self.last_day, self.last_hour)]
        return [(low, high) for low, high in spans if low < high]


@dataclass(frozen=True, slots=True)
class _RollupFilter:
    """Which rollup tables can answer a query, and its ``where`` over them.

    ``users``: the grouping or filters name an organization or a user, so only the
    per-user daily table can (whole days; the rest from raw rows). ``days``: whole UTC
    days can be read from daily rows (no buckets, or buckets of a day or more in a
    zone at UTC all window long)."""

    users: bool
    days: bool
    filters: tuple[tuple[str, tuple[str, ...]], ...]

    def on(self, table: Table) -> list[ColumnElement[bool]]:
        return [table.c[column].in_(keys) for column, keys in self.filters]


@dataclass(frozen=True, slots=True)
class _Query:
    """The checked arguments shared by :func:`usage` and :func:`latency`."""

    since: datetime
    until: datetime
    by: tuple[str, ...]
    buckets: _Buckets | None
    conditions: tuple[ColumnElement[bool], ...]
    rollup: _RollupFilter | None  # None: no rollup table can answer

    def raw(
        self,
        db: Database,
        values: Mapping[str, ColumnElement[Any]],
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Select[Any]:
        """LLM calls of the window (or of ``[since, until)`` inside it): group keys
        ``g0..``, the bucket key ``b``, values."""
        columns: list[ColumnElement[Any]] = [
            chronicle_events.c[GROUPS[name]].label(f"g{i}") for i, name in enumerate(self.by)
        ]
        if self.buckets is not None:
            columns.append(self.buckets.key_sql(db, self.since, self.until).label("b"))
        columns += [value.label(name) for name, value in values.items()]
        return select(*columns).where(
            events.event_type == LLM_CALL,
            events.created_at >= (self.since if since is None else since),
            events.created_at < (self.until if until is None else until),
            *self.conditions,
        )

    def base(self, db: Database, values: Mapping[str, ColumnElement[Any]]) -> Subquery:
        return self.raw(db, values).subquery("calls")

    def rolled(
        self,
        db: Database,
        table: Table,
        values: Mapping[str, ColumnElement[Any]],
        since: datetime,
        until: datetime,
    ) -> Select[Any]:
        """Rows of the rollup ``table`` in ``[since, until)``, with the same keys as
        :meth:`raw` (``''`` read back as NULL) and ``values`` over it."""
        assert self.rollup is not None
        time = table.c.day if "day" in table.c else table.c.hour
        columns: list[ColumnElement[Any]] = [
            func.nullif(table.c[GROUPS[name]], "").label(f"g{i}") for i, name in enumerate(self.by)
        ]
        if self.buckets is not None:
            columns.append(self.buckets.key_sql(db, self.since, self.until, time).label("b"))
        columns += [value.label(name) for name, value in values.items()]
        return select(*columns).where(time >= since, time < until, *self.rollup.on(table))

    def spans(
        self, source: Source, longer_than: timedelta, *, latency: bool = False
    ) -> _Spans | None:
        """The parts of the window to read from the rollup, or None for none (raw rows
        only). ``latency``: only the tables with a histogram will do."""
        usable = self.rollup is not None and not (latency and self.rollup.users)
        if source == "raw" or not usable:
            if source == "rollup":
                raise ValueError(
                    "source='rollup' needs a grouping and filters the rollup has: "
                    f"by and where among {', '.join(_ROLLUP_GROUPS)} (organization and "
                    "user for usage only, over whole days), buckets of an hour or more "
                    "on whole hours"
                )
            return None
        if source == "auto" and self.until - self.since <= longer_than:
            return None
        first = self.since.replace(minute=0, second=0, microsecond=0)
        if first < self.since:
            first += timedelta(hours=1)
        last = self.until.replace(minute=0, second=0, microsecond=0)
        if first >= last:
            return None
        first_day = last_day = first
        assert self.rollup is not None
        if self.rollup.days:
            first_day = first.replace(hour=0)
            if first_day < first:
                first_day += timedelta(days=1)
            last_day = last.replace(hour=0)
            if first_day >= last_day:
                first_day = last_day = first
        if self.rollup.users and first_day >= last_day:
            return None  # the per-user rollup has whole days only
        return _Spans(first, last, first_day, last_day)

    @property
    def keys(self) -> list[str]:
        return [f"g{i}" for i in range(len(self.by))] + (["b"] if self.buckets else [])

    def rows(
        self, found: Iterable[Mapping[str, Any]]
    ) -> list[tuple[datetime, datetime, dict[str, str | None], Mapping[str, Any] | None]]:
        """Each group in each bucket, in order: (start, end, group, its SQL row or None
        for an empty bucket to fill)."""
        by_key: dict[tuple[Any, ...], Mapping[str, Any]] = {}
        groups: set[tuple[Any, ...]] = set()
        for row in found:
            group = tuple(row[f"g{i}"] for i in range(len(self.by)))
            groups.add(group)
            by_key[(*group, self.buckets.from_sql(row["b"]) if self.buckets else None)] = row
        if not self.by:
            groups.add(())
        ordered = sorted(groups, key=lambda g: tuple(_sort_key(v) for v in g))
        result = []
        buckets = self.buckets
        if buckets is None:
            for group in ordered:
                result.append(
                    (
                        self.since,
                        self.until,
                        dict(zip(self.by, group, strict=True)),
                        by_key.get((*group, None)),
                    )
                )
            return result
        first = buckets.key(self.since)
        last = buckets.key(self.until - timedelta(microseconds=1))
        for key in range(first, last + 1):
            # The first and last buckets cover only the part inside the window.
            start = max(buckets.start(key), self.since)
            end = min(buckets.start(key + 1), self.until)
            for group in ordered:
                result.append(
                    (start, end, dict(zip(self.by, group, strict=True)), by_key.get((*group, key)))
                )
        return result


_ROLLUP_GROUPS: Final = tuple(name for name, column in GROUPS.items() if column in USER_ROLLUP_KEYS)


def _rollup_filter(
    by: tuple[str, ...], buckets: _Buckets | None, where: Where, since: datetime, until: datetime
) -> _RollupFilter | None:
    """Which rollup tables can answer, with the ``where`` conditions over them; None
    when none can: a group, filter or bucket they do not have."""
    columns = {GROUPS[name] for name in by}
    days = True
    if buckets is not None:
        if buckets.size == "minute":
            return None
        offsets = _utc_offsets(buckets.zone, since, until)
        if buckets.size != "hour" and any(off % 3600 for _, off in offsets):
            return None  # local days that do not start on a UTC hour
        days = buckets.size != "hour" and all(off == 0 for _, off in offsets)
    filters: list[tuple[str, tuple[str, ...]]] = []
    for name, value in where.items():
        column = GROUPS.get(name, name)
        values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
        if not all(v is None or isinstance(v, str) for v in values):
            return None
        if "" in values:
            return None  # '' and NULL are one key in the rollup
        columns.add(column)
        filters.append((column, tuple("" if v is None else v for v in values)))
    if not columns <= set(USER_ROLLUP_KEYS):
        return None
    users = not columns <= set(ROLLUP_KEYS)
    if users and not days:
        return None
    return _RollupFilter(users=users, days=days, filters=tuple(filters))


def _query(
    db: Database,
    since: TimeArg,
    until: TimeArg,
    by: str | Iterable[str],
    bucket: str | None,
    tz: str | tzinfo | None,
    where: Where,
    now: datetime | None,
) -> _Query:
    zone = _zone(tz)
    start, end = _window(since, until, now, zone)
    names = _group_names(by)
    buckets = _make_buckets(bucket, zone, start, end)
    return _Query(
        since=start,
        until=end,
        by=names,
        buckets=buckets,
        conditions=tuple(_where_events(db, where)),
        rollup=_rollup_filter(names, buckets, where, start, end),
    )


def _check_source(source: str) -> Source:
    if source not in ("auto", "raw", "rollup"):
        raise ValueError(f"source must be 'auto', 'raw' or 'rollup', got {source!r}")
    return source  # type: ignore[return-value]


_USAGE_SUMS: Final = USAGE_SUM_COLUMNS  # what usage() sums: the per-user table's columns


def _raw_usage_values() -> dict[str, ColumnElement[Any]]:
    """Per raw row, the values :func:`usage` sums (as the rollup sums them)."""
    completion_ok = and_(events.completion_tokens.is_not(None), events.request_latency_ms > 0)
    priced = events.cost_usd.is_not(None)
    tokens = func.coalesce(
        events.total_tokens,
        func.coalesce(events.prompt_tokens, 0) + func.coalesce(events.completion_tokens, 0),
    )
    return {
        "requests": literal(1, BigInteger),
        "errors": case((events.error.is_not(None), 1), else_=0),
        "rate_limited": case((events.rate_limited.is_(true()), 1), else_=0),
        "retried": case((events.retries > 0, 1), else_=0),
        "retries": events.retries,
        "prompt_tokens": events.prompt_tokens,
        "completion_tokens": events.completion_tokens,
        "total_tokens": events.total_tokens,
        "cache_read_tokens": events.cache_read_tokens,
        "cache_write_tokens": events.cache_write_tokens,
        "reasoning_tokens": events.reasoning_tokens,
        "cost_nanos": cast(func.round(events.cost_usd * 1_000_000_000), BigInteger),
        "priced": case((priced, 1), else_=0),
        "unpriced": case((priced, 0), else_=1),
        "unpriced_tokens": case((priced, 0), else_=tokens),
        "tps_tokens": case((completion_ok, events.completion_tokens), else_=null()),
        "tps_ms": case((completion_ok, events.request_latency_ms), else_=null()),
        "user_id": events.user_id,
    }


def _rollup_usage_values(table: Table, *, users: bool) -> dict[str, ColumnElement[Any]]:
    """The usage sums of a rollup table (``users``: and its users, else NULL)."""
    values: dict[str, ColumnElement[Any]] = {name: table.c[name] for name in _USAGE_SUMS}
    values["user_id"] = func.nullif(table.c.user_id, "") if users else cast(null(), Text)
    return values


def _usage_totals(q: _Query, base: Subquery, *, users: bool = True) -> Select[Any]:
    """The sums (and distinct users) of ``base``'s rows per group and bucket."""
    group = [base.c[k] for k in q.keys]
    columns = [func.sum(base.c[name]).label(name) for name in _USAGE_SUMS]
    if users:
        columns.append(func.count(base.c.user_id.distinct()).label("users"))
    return select(*group, *columns).group_by(*group)


def _edges(q: _Query, spans: _Spans) -> list[tuple[datetime, datetime]]:
    """The partial hours at the window's ends: raw rows."""
    edges = [(q.since, spans.first_hour), (spans.last_hour, q.until)]
    return [(low, high) for low, high in edges if low < high]


def _per_user_parts(db: Database, q: _Query, spans: _Spans) -> Subquery:
    """Whole days from the per-user table (sums and users), the rest from raw rows."""
    raw_values = _raw_usage_values()
    table = eventlog_rollup_users_daily
    parts = [
        q.rolled(
            db,
            table,
            _rollup_usage_values(table, users=True),
            spans.first_day,
            spans.last_day,
        )
    ]
    for low, high in [*_edges(q, spans), *spans.hour_spans()]:
        parts.append(q.raw(db, raw_values, low, high))
    return union_all(*parts).subquery("calls")


async def _coarse_usage(db: Database, q: _Query, spans: _Spans) -> list[Mapping[str, Any]]:
    """Usage whose grouping and filters the hourly and daily rollups have: the sums from
    those (whole days from the daily one), the distinct users, which they do not keep,
    from the users' presence tables, in a second query over narrow rows; the partial
    hours at the ends from raw rows in both."""
    raw_values = _raw_usage_values()
    sums: list[Select[Any]] = []
    users: list[Select[Any]] = []
    for low, high in _edges(q, spans):
        sums.append(q.raw(db, raw_values, low, high))
        users.append(q.raw(db, {"user_id": events.user_id}, low, high))

    def rolled(table: Table, low: datetime, high: datetime, *, user_only: bool) -> Select[Any]:
        values = (
            {"user_id": func.nullif(table.c.user_id, "")}
            if user_only
            else _rollup_usage_values(table, users=False)
        )
        return q.rolled(db, table, values, low, high)

    if spans.first_day < spans.last_day:
        sums.append(rolled(eventlog_rollup_daily, spans.first_day, spans.last_day, user_only=False))
        # A day's users: a few thousand narrow rows when nothing is grouped or filtered.
        assert q.rollup is not None
        day_users = (
            eventlog_rollup_active_users
            if not q.by and not q.rollup.filters
            else eventlog_rollup_users_daily
        )
        users.append(rolled(day_users, spans.first_day, spans.last_day, user_only=True))
    for low, high in spans.hour_spans():
        sums.append(rolled(eventlog_rollup_hourly, low, high, user_only=False))
        users.append(rolled(eventlog_rollup_users_hourly, low, high, user_only=True))
    seen = union_all(*users).subquery("seen")
    if db.dialect == "postgresql":
        # Distinct pairs first (a hash), then counted: cheaper there than
        # count(DISTINCT) per group, which sorts (SQLite is faster the other way).
        seen = select(*(seen.c[k] for k in q.keys), seen.c.user_id).distinct().subquery("pairs")
        users_count = func.count(seen.c.user_id)
    else:
        users_count = func.count(seen.c.user_id.distinct())
    group = [seen.c[k] for k in q.keys]
    found, counted = await _fetch_each(
        db,
        [
            _usage_totals(q, union_all(*sums).subquery("calls"), users=False),
            select(*group, users_count.label("users")).group_by(*group),
        ],
        "reading usage",
    )
    by_key = {tuple(row[k] for k in q.keys): dict(row) for row in found}
    for row in counted:
        key = tuple(row[k] for k in q.keys)
        into = by_key.get(key)
        if into is None:  # cannot happen (a user is seen only with a call), but be whole
            into = by_key[key] = {**{k: row[k] for k in q.keys}, "requests": 0}
        into["users"] = row["users"]
    return list(by_key.values())


async def usage(
    db: Database,
    *,
    since: TimeArg = "24h",
    until: TimeArg = None,
    by: str | Iterable[str] = (),
    bucket: Bucket | None = None,
    tz: str | tzinfo | None = None,
    where: Where | None = None,
    now: datetime | None = None,
    source: Source = "auto",
) -> list[UsageRow]:
    """Requests, errors, rate limits, retries, tokens, cost and users of the LLM calls in
    ``[since, until)``, per group of ``by`` (see :data:`GROUPS`) and per ``bucket``.

    ``until`` defaults to ``now`` (the current time; pass it for repeatable windows).
    Bucketed results have a row for every bucket of the window and every group found,
    zeros where there were no calls; without ``by`` and ``bucket``, one total row.
    ``source="auto"`` reads a window longer than :data:`ROLLUP_MIN_WINDOW` from the
    rollup (whole UTC days from the daily tables, other whole hours from the hourly
    one; organization and user from the per-user daily table) and the rest from the
    raw rows, when grouping and filters allow (``"raw"``/``"rollup"`` force a side);
    the figures are the same either way.
    ``ValueError`` names the argument that is wrong.
    """
    q = _query(db, since, until, by, bucket, tz, where or {}, now)
    spans = q.spans(_check_source(source), ROLLUP_MIN_WINDOW)
    if spans is None:
        found = await _fetch(db, _usage_totals(q, q.base(db, _raw_usage_values())), "reading usage")
    elif q.rollup is not None and q.rollup.users:
        found = await _fetch(db, _usage_totals(q, _per_user_parts(db, q, spans)), "reading usage")
    else:
        found = await _coarse_usage(db, q, spans)
    result = []
    for start, end, names, row in q.rows(found):
        values = row or {}

        def number(name: str, values: Mapping[str, Any] = values) -> int:
            return int(values.get(name) or 0)

        tps_ms = number("tps_ms")
        result.append(
            UsageRow(
                start=start,
                end=end,
                group=names,
                requests=number("requests"),
                errors=number("errors"),
                rate_limited=number("rate_limited"),
                retried=number("retried"),
                retries=number("retries"),
                prompt_tokens=number("prompt_tokens"),
                completion_tokens=number("completion_tokens"),
                total_tokens=number("total_tokens"),
                users=number("users"),
                output_tokens_per_second=(number("tps_tokens") * 1000 / tps_ms if tps_ms else None),
                cache_read_tokens=number("cache_read_tokens"),
                cache_write_tokens=number("cache_write_tokens"),
                reasoning_tokens=number("reasoning_tokens"),
                cost_usd=Decimal(number("cost_nanos")).scaleb(-9),
                priced_requests=number("priced"),
                unpriced_requests=number("unpriced"),
                unpriced_tokens=number("unpriced_tokens"),
            )
        )
    return result


async def latency(
    db: Database,
    *,
    since: TimeArg = "24h",
    until: TimeArg = None,
    by: str | Iterable[str] = (),
    bucket: Bucket | None = None,
    tz: str | tzinfo | None = None,
    where: Where | None = None,
    now: datetime | None = None,
    source: Source = "auto",
) -> list[LatencyRow]:
    """Average and percentiles of request latency, total latency and time to first
    token of the LLM calls, per group and bucket as in :func:`usage` (same arguments,
    same rows in the same order).

    Exact (nearest-rank) from the raw rows for windows up to
    :data:`EXACT_PERCENTILE_WINDOW`; longer windows read the rollup's histogram when the
    grouping and filters allow (approximate request percentiles, see
    :class:`LatencyStats`), or the raw rows otherwise. ``source`` forces a side.
    """
    q = _query(db, since, until, by, bucket, tz, where or {}, now)
    spans = q.spans(_check_source(source), EXACT_PERCENTILE_WINDOW, latency=True)
    if spans is not None:
        return await _approximate_latency(db, q, spans)
    base = q.base(
        db,
        {
            "req": events.request_latency_ms,
            "tot": events.total_latency_ms,
            "ttft": events.ttft_ms,
        },
    )
    found = await _percentiles(db, base, q.keys, ["req", "tot", "ttft"], "reading latency")
    empty: Mapping[str, Any] = {}
    return [
        LatencyRow(
            start=start,
            end=end,
            group=names,
            request=_stats(row or empty, "req"),
            total=_stats(row or empty, "tot"),
            ttft=_stats(row or empty, "ttft"),
        )
        for start, end, names, row in q.rows(found)
    ]


_BINS: Final = tuple(f"lat_{i:02d}" for i in range(len(LATENCY_BIN_EDGES) + 1))
_BIN_WIDTH: Final = 2**0.25


async def _approximate_latency(db: Database, q: _Query, spans: _Spans) -> list[LatencyRow]:
    """Latency over a long window: the rollup's histograms and sums for the whole days
    and hours, the raw rows of the partial hours at the ends binned the same way."""
    first, last = spans.first_hour, spans.last_hour
    sums = (
        "latency_count",
        "latency_sum_ms",
        "total_latency_count",
        "total_latency_sum_ms",
        "ttft_count",
        "ttft_sum_ms",
        *_BINS,
    )
    names = (*sums, "latency_max_ms")
    parts = [
        q.rolled(db, table, {name: table.c[name] for name in names}, low, high)
        for table, low, high in [
            (eventlog_rollup_daily, spans.first_day, spans.last_day),
            *((eventlog_rollup_hourly, low, high) for low, high in spans.hour_spans()),
        ]
        if low < high
    ]
    rolled = union_all(*parts).subquery("r") if len(parts) > 1 else parts[0].subquery("r")
    group = [rolled.c[k] for k in q.keys]
    statement = select(
        *group,
        *(func.sum(rolled.c[n]).label(n) for n in sums),
        func.max(rolled.c.latency_max_ms).label("latency_max_ms"),
    ).group_by(*group)
    found = await _fetch(db, statement, "reading latency")
    totals: dict[tuple[Any, ...], list[int]] = {}
    for row in found:
        totals[tuple(row[k] for k in q.keys)] = [int(row[n] or 0) for n in names]
    edges = [(q.since, first), (last, q.until)]
    for start, end in edges:
        if start >= end:
            continue
        raw = q.raw(
            db,
            {
                "req": events.request_latency_ms,
                "tot": events.total_latency_ms,
                "ttft": events.ttft_ms,
            },
            start,
            end,
        )
        for row in await _fetch(db, raw, "reading latency"):
            key = tuple(row[k] for k in q.keys)
            into = totals.setdefault(key, [0] * (len(sums) + 1))
            for i, name in ((0, "req"), (2, "tot"), (4, "ttft")):
                value = row[name]
                if value is not None:
                    into[i] += 1
                    into[i + 1] += value
                    if name == "req":
                        into[6 + latency_bin(value)] += 1
                        into[-1] = max(into[-1], value)
    rows = [{**dict(zip(q.keys, key, strict=True)), "sums": value} for key, value in totals.items()]
    result = []
    for start, end, group_names, summed in q.rows(rows):
        values = summed["sums"] if summed else [0] * (len(sums) + 1)
        result.append(
            LatencyRow(
                start=start,
                end=end,
                group=group_names,
                request=_histogram_stats(values[0], values[1], values[6:-1], values[-1]),
                total=_average_only(values[2], values[3]),
                ttft=_average_only(values[4], values[5]),
            )
        )
    return result


def _average_only(count: int, total: int) -> LatencyStats:
    return LatencyStats(count, total / count if count else None, None, None, None, None, None)


def _histogram_stats(count: int, total: int, bins: Sequence[int], maximum: int) -> LatencyStats:
    def pick(p: float) -> int | None:
        if count == 0 or count < MIN_SAMPLES.get(p, 0):
            return None
        rank = max(1, math.ceil(p * count))
        seen = 0
        for i, n in enumerate(bins):
            seen += n
            if seen >= rank:
                # The top of bin i (bin 0 is under 1 ms), never above the slowest call;
                # the last bin's top is the slowest call.
                if i == 0:
                    return 0
                if i < len(LATENCY_BIN_EDGES):
                    return min(LATENCY_BIN_EDGES[i] - 1, maximum)
                return maximum
        return None

    return LatencyStats(
        count=count,
        avg=total / count if count else None,
        p50=pick(0.5),
        p75=pick(0.75),
        p90=pick(0.9),
        p95=pick(0.95),
        p99=pick(0.99),
        approximate=True,
        bin_width=_BIN_WIDTH,
    )


# -- runs and steps ----------------------------------------------------------------------


def _run_conditions(
    since: datetime, until: datetime, workflow: str | None, status: str | None
) -> list[ColumnElement[bool]]:
    conditions = [runs.created_at >= since, runs.created_at < until]
    if workflow is not None:
        conditions.append(runs.name == workflow)
    if status is not None:
        conditions.append(runs.status == status)
    return conditions


def _run_window(
    since: TimeArg, until: TimeArg, tz: str | tzinfo | None, now: datetime | None
) -> tuple[datetime, datetime]:
    return _window(since, until, now, _zone(tz))


def _duration_ms(
    db: Database, start: ColumnElement[Any], end: ColumnElement[Any]
) -> ColumnElement[int]:
    """Whole milliseconds from ``start`` to ``end``, computed in integers on both backends."""
    return (_epoch_us(db, end) - _epoch_us(db, start)) // 1000


async def run_status_counts(
    db: Database,
    *,
    since: TimeArg = "24h",
    until: TimeArg = None,
    workflow: str | None = None,
    tz: str | tzinfo | None = None,
    now: datetime | None = None,
) -> list[RunStatusCount]:
    """Runs started in the window, per workflow (the run's name) and status."""
    start, end = _run_window(since, until, tz, now)
    statement = (
        select(runs.name, runs.status, func.count().label("runs"))
        .where(*_run_conditions(start, end, workflow, None))
        .group_by(runs.name, runs.status)
    )
    found = await _fetch(db, statement, "counting runs")
    rows = [RunStatusCount(r["name"], r["status"], int(r["runs"])) for r in found]
    return sorted(rows, key=lambda r: (_sort_key(r.workflow), r.status))


async def run_durations(
    db: Database,
    *,
    since: TimeArg = "24h",
    until: TimeArg = None,
    workflow: str | None = None,
    tz: str | tzinfo | None = None,
    now: datetime | None = None,
) -> list[RunDuration]:
    """Duration percentiles per workflow of the runs started in the window that have
    ended (any status but ``started``): start to last update."""
    start, end = _run_window(since, until, tz, now)
    base = (
        select(
            runs.name.label("g0"),
            _duration_ms(db, runs.created_at, runs.updated_at).label("dur"),
        )
        .where(*_run_conditions(start, end, workflow, None), runs.status != "started")
        .subquery("ended")
    )
    found = await _percentiles(db, base, ["g0"], ["dur"], "reading run durations")
    rows = [RunDuration(r["g0"], _stats(r, "dur")) for r in found]
    return sorted(rows, key=lambda r: _sort_key(r.workflow))


def _step_counts() -> Subquery:
    return (
        select(
            steps.run_id,
            func.count().label("steps"),
            func.sum(case((steps.status == "error", 1), else_=0)).label("failed"),
        )
        .group_by(steps.run_id)
        .subquery("step_counts")
    )


def _run_row(row: Mapping[str, Any]) -> RunRow:
    return RunRow(
        id=row["id"],
        workflow=row["name"],
        status=row["status"],
        application=row["application"],
        environment=row["environment"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        duration_ms=None if row["status"] == "started" else int(row["duration_ms"]),
        steps=int(row["steps"] or 0),
        failed_steps=int(row["failed"] or 0),
        llm_calls=int(row["llm_calls"] or 0),
        cost_usd=Decimal(int(row["cost_nanos"] or 0)).scaleb(-9),
        unpriced_calls=int(row["unpriced_calls"] or 0),
    )


def _run_calls(column: ColumnElement[Any]) -> Select[Any]:
    """A scalar subquery over the LLM calls of the outer run (the run_id index)."""
    return select(column).where(events.run_id == runs.id, events.event_type == LLM_CALL)


_RUN_COST: Final = cast(func.round(events.cost_usd * 1_000_000_000), BigInteger)


def _runs_select(db: Database) -> Select[Any]:
    counts = _step_counts()
    return select(
        runs.id,
        runs.name,
        runs.status,
        runs.application,
        runs.environment,
        runs.created_at,
        runs.updated_at,
        _duration_ms(db, runs.created_at, runs.updated_at).label("duration_ms"),
        counts.c.steps,
        counts.c.failed,
        _run_calls(func.count()).scalar_subquery().label("llm_calls"),
        _run_calls(func.sum(_RUN_COST)).scalar_subquery().label("cost_nanos"),
        _run_calls(func.sum(case((events.cost_usd.is_(None), 1), else_=0)))
        .scalar_subquery()
        .label("unpriced_calls"),
    ).outerjoin(counts, counts.c.run_id == runs.id)


async def list_runs(
    db: Database,
    *,
    since: TimeArg = "24h",
    until: TimeArg = None,
    workflow: str | None = None,
    status: str | None = None,
    order: Literal["recent", "slowest", "expensive"] = "recent",
    limit: int = 20,
    tz: str | tzinfo | None = None,
    now: datetime | None = None,
) -> list[RunRow]:
    """Runs started in the window with their step counts and LLM calls: the most
    recent first, the slowest ended ones first (``order="slowest"``), or the most
    expensive first (``order="expensive"``: by the cost of their priced calls)."""
    positive_int("limit", limit)
    if order not in ("recent", "slowest", "expensive"):
        raise ValueError(f"order must be 'recent', 'slowest' or 'expensive', got {order!r}")
    start, end = _run_window(since, until, tz, now)
    statement = _runs_select(db).where(*_run_conditions(start, end, workflow, status))
    if order == "slowest":
        duration = _duration_ms(db, runs.created_at, runs.updated_at)
        statement = statement.where(runs.status != "started").order_by(duration.desc(), runs.id)
    elif order == "expensive":
        cost = _run_calls(func.coalesce(func.sum(_RUN_COST), 0)).scalar_subquery()
        statement = statement.order_by(cost.desc(), runs.id)
    else:
        statement = statement.order_by(runs.created_at.desc(), runs.id)
    found = await _fetch(db, statement.limit(limit), "listing runs")
    return [_run_row(r) for r in found]


async def get_run(db: Database, run_id: uuid.UUID | str) -> RunDetail | None:
    """One run and its steps in start order (steps never started last), or ``None``."""
    try:
        key = run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(str(run_id))
    except ValueError:
        raise ValueError(f"run_id must be a UUID, got {run_id!r}") from None
    steps_of_run = (
        select(
            steps.id,
            steps.type,
            steps.name,
            steps.status,
            steps.parent_step,
            steps.start_time,
            steps.end_time,
            _duration_ms(db, runs.created_at, steps.start_time).label("offset_ms"),
            _duration_ms(db, steps.start_time, steps.end_time).label("duration_ms"),
        )
        .join(chronicle_runs, runs.id == steps.run_id)
        .where(steps.run_id == key)
    )
    calls_of_run = select(func.count().label("n")).where(
        events.run_id == key, events.event_type == LLM_CALL
    )
    # In one snapshot: a live run's header (its step counts), its steps and its calls
    # must agree with each other.
    found, rows, calls = await _fetch_each(
        db,
        [_runs_select(db).where(runs.id == key), steps_of_run, calls_of_run],
        "reading a run",
    )
    if not found:
        return None
    run = _run_row(found[0])
    step_rows = [
        StepRow(
            id=r["id"],
            type=r["type"],
            name=r["name"],
            status=r["status"],
            parent_step=r["parent_step"],
            start_time=r["start_time"],
            end_time=r["end_time"],
            offset_ms=None if r["offset_ms"] is None else int(r["offset_ms"]),
            duration_ms=None if r["duration_ms"] is None else int(r["duration_ms"]),
        )
        for r in rows
    ]
    far = datetime.max.replace(tzinfo=UTC)
    step_rows.sort(key=lambda s: (s.start_time or s.end_time or far, str(s.id)))
    return RunDetail(run=run, steps=step_rows, llm_calls=int(calls[0]["n"]))


async def step_failures(
    db: Database,
    *,
    since: TimeArg = "24h",
    until: TimeArg = None,
    workflow: str | None = None,
    tz: str | tzinfo | None = None,
    now: datetime | None = None,
) -> list[StepFailures]:
    """Steps of the runs started in the window, per type and name, with how many failed;
    the most failing first."""
    start, end = _run_window(since, until, tz, now)
    statement = (
        select(
            steps.type,
            steps.name,
            func.count().label("steps"),
            func.sum(case((steps.status == "error", 1), else_=0)).label("failed"),
        )
        .join(chronicle_runs, runs.id == steps.run_id)
        .where(*_run_conditions(start, end, workflow, None))
        .group_by(steps.type, steps.name)
    )
    found = await _fetch(db, statement, "counting step failures")
    rows = [StepFailures(r["type"], r["name"], int(r["steps"]), int(r["failed"])) for r in found]
    return sorted(rows, key=lambda r: (-r.failed, -r.steps, _sort_key(r.type), _sort_key(r.name)))


async def top_errors(
    db: Database,
    *,
    since: TimeArg = "24h",
    until: TimeArg = None,
    where: Where | None = None,
    limit: int = 10,
    tz: str | tzinfo | None = None,
    now: datetime | None = None,
) -> list[ErrorCount]:
    """The most frequent errors of LLM calls, by the error's ``type`` and ``message``
    (an error that is not an object counts as a message of no type)."""
    positive_int("limit", limit)
    zone = _zone(tz)
    start, end = _window(since, until, now, zone)
    is_object: ColumnElement[bool]
    kind: ColumnElement[Any]
    if db.dialect == "postgresql":
        is_object = func.jsonb_typeof(events.error) == "object"
        kind = events.error.op("->>")(literal("type"))
        message = case(
            (is_object, events.error.op("->>")(literal("message"))),
            else_=events.error.op("#>>")(cast(literal("{}"), ARRAY(Text))),
        )
    else:
        is_object = func.json_type(events.error) == "object"
        kind = func.json_extract(events.error, literal("$.type"))
        message = case(
            (is_object, func.json_extract(events.error, literal("$.message"))),
            else_=func.json_extract(events.error, literal("$")),
        )
    base = (
        select(
            case((is_object, kind), else_=null()).label("kind"),
            func.substr(message, 1, 200).label("message"),
            events.created_at,
        )
        .where(
            events.event_type == LLM_CALL,
            events.error.is_not(None),
            events.created_at >= start,
            events.created_at < end,
            *_where_events(db, where or {}),
        )
        .subquery("errors")
    )
    statement = select(
        base.c.kind,
        base.c.message,
        func.count().label("n"),
        func.max(base.c.created_at).label("last"),
    ).group_by(base.c.kind, base.c.message)
    found = await _fetch(db, statement, "counting errors")
    rows = [
        ErrorCount(
            type=None if r["kind"] is None else str(r["kind"]),
            message=None if r["message"] is None else str(r["message"]),
            count=int(r["n"]),
            last_seen=_as_utc(r["last"]),
        )
        for r in found
    ]
    rows.sort(key=lambda r: (-r.count, _sort_key(r.type), _sort_key(r.message)))
    return rows[:limit]


def _as_utc(value: Any) -> datetime:
    """``max(created_at)`` loses the column type on SQLite: parse its text back."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


# -- the stable JSON form ----------------------------------------------------------------

STATS_KEYS: Final = (
    "start",
    "end",
    "group",
    "requests",
    "errors",
    "error_rate",
    "rate_limited",
    "rate_limited_rate",
    "retried",
    "retry_rate",
    "retries",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "users",
    "output_tokens_per_second",
    "latency_ms",
    "total_latency_ms",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "cost_per_1k_requests",
    "priced_requests",
    "unpriced_requests",
    "unpriced_tokens",
    "ttft_ms",
)
"""The keys of every object of :func:`stats_records`, in order. A contract for scripts
(per-tenant billing): keys are only ever added, never renamed or removed."""

LATENCY_KEYS: Final = (
    "count",
    "avg",
    "p50",
    "p75",
    "p90",
    "p95",
    "p99",
    "approximate",
    "bin_width",
)


def iso_utc(value: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``: the one time format of the JSON output."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def usd_text(value: Decimal) -> str:
    """Dollars for people: cents from $1 up, three decimals from a cent, and below a
    cent the digits down to the nano-dollar (``0.0000004``), so that a cost above zero
    never reads as zero."""
    if value == 0:
        return "0.00"
    if abs(value) >= 1:
        return f"{value:,.2f}"
    if abs(value) >= Decimal("0.01"):
        return f"{value:.3f}"
    return format(value.quantize(_NANO_USD).normalize(), "f")


def _decimal_text(value: Decimal | None) -> str | None:
    # Fixed-point always: str() writes a cost under a micro-dollar as "5E-9" or "0E-9".
    return None if value is None else format(value, "f")


def _latency_json(stats: LatencyStats) -> dict[str, Any]:
    return {key: getattr(stats, key) for key in LATENCY_KEYS}


def latency_for(
    usage_rows: Sequence[UsageRow], latency_rows: Sequence[LatencyRow]
) -> list[LatencyRow]:
    """The latency row of each usage row's bucket and group, in ``usage_rows``' order:
    :func:`usage` and :func:`latency` of the same arguments read the database one after
    the other, so a call committed in between can add a group (or a bucket's first call)
    to one list only. A usage row without one gets a row of no samples; latency rows of
    groups ``usage_rows`` lacks are left out. ``ValueError`` if the rows cannot come from
    the same arguments (other buckets or other ``by``)."""
    if usage_rows and latency_rows:
        first_use, first_lat = usage_rows[0], latency_rows[0]
        buckets = {(u.start, u.end) for u in usage_rows}
        if list(first_use.group) != list(first_lat.group) or not buckets.issuperset(
            (lat.start, lat.end) for lat in latency_rows
        ):
            raise ValueError("usage_rows and latency_rows must come from the same arguments")
    found = {(lat.start, lat.end, tuple(lat.group.items())): lat for lat in latency_rows}
    return [
        found.get((use.start, use.end, tuple(use.group.items())))
        or LatencyRow(use.start, use.end, use.group, _NO_SAMPLES, _NO_SAMPLES, _NO_SAMPLES)
        for use in usage_rows
    ]


def stats_records(
    usage_rows: Sequence[UsageRow], latency_rows: Sequence[LatencyRow]
) -> list[dict[str, Any]]:
    """:func:`usage` and :func:`latency` rows of the same arguments as JSON objects with
    the keys :data:`STATS_KEYS`: times in UTC, ``group`` an object of the ``by`` names,
    rates as fractions (``null`` without requests), latency objects of
    :data:`LATENCY_KEYS` in milliseconds, money as exact decimal text (``"0.004250000"``,
    USD). A row per usage row, with its latency as :func:`latency_for` pairs them."""
    records = []
    for use, lat in zip(usage_rows, latency_for(usage_rows, latency_rows), strict=True):
        records.append(
            {
                "start": iso_utc(use.start),
                "end": iso_utc(use.end),
                "group": dict(use.group),
                "requests": use.requests,
                "errors": use.errors,
                "error_rate": use.error_rate,
                "rate_limited": use.rate_limited,
                "rate_limited_rate": use.rate_limited_rate,
                "retried": use.retried,
                "retry_rate": use.retry_rate,
                "retries": use.retries,
                "prompt_tokens": use.prompt_tokens,
                "completion_tokens": use.completion_tokens,
                "total_tokens": use.total_tokens,
                "users": use.users,
                "output_tokens_per_second": use.output_tokens_per_second,
                "latency_ms": _latency_json(lat.request),
                "total_latency_ms": _latency_json(lat.total),
                "cache_read_tokens": use.cache_read_tokens,
                "cache_write_tokens": use.cache_write_tokens,
                "reasoning_tokens": use.reasoning_tokens,
                # Exact decimal text: a float would lose cents over many calls.
                "cost_usd": format(use.cost_usd, "f"),
                "cost_per_1k_requests": _decimal_text(use.cost_per_1k_requests),
                "priced_requests": use.priced_requests,
                "unpriced_requests": use.unpriced_requests,
                "unpriced_tokens": use.unpriced_tokens,
                "ttft_ms": _latency_json(lat.ttft),
            }
        )
    return records


def flat_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A :func:`stats_records` object with its nested objects spread out (``group``'s
    names as columns, ``latency_ms_p95``...): one CSV row."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if key == "group":
            flat.update(value)
        elif isinstance(value, Mapping):
            flat.update({f"{key}_{inner}": v for inner, v in value.items()})
        else:
            flat[key] = value
    return flat
