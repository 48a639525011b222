"""Analytics on a million LLM calls: how fast the everyday questions are answered, how
long a prune holds the tables, and what the rollup and the cost columns cost the writer.

``python benchmarks/analytics.py [--events 1000000] [--pg-url URL] [--sqlite PATH]
[--repeat 5] [--json FILE] [--reload]``

For each backend, a data set of ``--events`` realistic LLM calls over the 30 days before
a fixed :data:`NOW` (more traffic by day and on weekdays; 8 models of 4 providers, each
with its own token-usage shape; 200 users of uneven activity in 24 organisations, 5
applications; ~3 % errors; log-normal latencies; cached and reasoning tokens) is written
through ``Database.write_log_batch`` in batches of ``--batch``, which fills the hourly
rollup as the writer does. The data set is kept (a PostgreSQL database named by
``--pg-url``, created through the server's ``postgres`` database; a SQLite file) with a
marker row, so a second run with the same ``--events``, ``--seed`` and eventlog schema
skips the load (``--reload`` forces it); a database or file holding events this script did
not load is never touched. On PostgreSQL the load ends with ``VACUUM (ANALYZE)``, the
state autovacuum keeps a live table in.

Then, each ``--repeat`` times, interleaved, after one untimed round:

a. the 24 h breakdown by model: ``analytics.usage(by="model")`` and the exact
   ``analytics.latency(by="model")`` (p50...p99), each and their sum; and, to compare,
   the same usage with ``source="rollup"``;
b. 30-day daily series: ``usage(since="30d", bucket="day")`` (``source="auto"``, which
   reads the rollup), the same with ``source="raw"``, ``by="model"``, and
   ``latency(since="30d", bucket="day")`` (approximate, from the rollup's histogram);
c. ``maintenance.prune`` of ``--prune-events`` events, on a fresh copy (``CREATE
   DATABASE ... TEMPLATE``; SQLite's backup API) of a separate data set that holds a
   quarter more: the total time and the longest batch (its longest transaction, the
   longest the tables were held); then once more with a writer alongside (a batch of
   100 calls every 100 ms), whose longest ``write_log_batch`` is printed;
d. the write path: ``--write-events`` pre-built calls (1,000 a second of traffic, so a
   batch falls in one or two hours, as live traffic does) with fresh ids each run,
   written in batches of 1,000 with ``Database.concurrent_writes`` batches in flight,
   into an emptied scratch database, by the full writer, with the rollup off
   (``db._rollup = None``) and with the rollup and pricing off (``db._prices =
   None``), interleaved and rotated: A B C, B C A, C A B ...

Also printed: the load's time, the PostgreSQL index sizes (BRIN and B-tree), the SQLite
file's, and the rollup's rows against the events. ``--cleanup`` drops every database and
file the script made, at the end (the smoke test uses it). ``--json`` writes every
figure. A benchmark, not a test: the machine is shared, so compare figures measured in
the same run.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import gc
import hashlib
import itertools
import json
import math
import random
import re
import shlex
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import URL

import eventlog
from eventlog import Database, InternalMetadata, ProxyLogEvent, RequestMetadata, analytics
from eventlog.bench import _WORDS, _machine, check_pg_url
from eventlog.maintenance import prune
from eventlog.schema import metadata

NOW: Final = datetime(2026, 10, 15, 15, 30, tzinfo=UTC)
"""The data set ends here (a Thursday afternoon, not on a whole hour): every query
passes ``now=NOW``, so a rerun asks the same questions of the same rows."""
SPAN: Final = timedelta(days=30)
DEFAULT_PG_URL: Final = "postgresql://127.0.0.1/eventlog_bench"
DEFAULT_SQLITE: Final = Path("/tmp/eventlog_bench/analytics.db")
DATASET_VERSION: Final = 1  # bump when the generator changes: the stored sets reload
WRITE_BATCH: Final = 1000
WRITER_ALONGSIDE_BATCH: Final = 100
WRITER_ALONGSIDE_PERIOD: Final = 0.1

TARGETS_MS: Final = {
    ("breakdown_24h", "postgresql"): 100.0,
    ("breakdown_24h", "sqlite"): 300.0,
    ("usage_30d_day", "postgresql"): 50.0,
    ("usage_30d_day", "sqlite"): 50.0,
}
PRUNE_LOCK_TARGET_S: Final = 1.0

MARKER_TABLE: Final = "eventlog_bench_dataset"
EVENTLOG_TABLES: Final = (
    "chronicle_events",
    "chronicle_runs",
    "chronicle_steps",
    "eventlog_dead_letters",
    "eventlog_rollup_active_users",
    "eventlog_rollup_daily",
    "eventlog_rollup_hourly",
    "eventlog_rollup_users_daily",
    "eventlog_rollup_users_hourly",
)
STORAGE_TABLES: Final = (
    "chronicle_events",
    "eventlog_rollup_hourly",
    "eventlog_rollup_daily",
    "eventlog_rollup_users_daily",
    "eventlog_rollup_users_hourly",
    "eventlog_rollup_active_users",
)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_HOUR_US: Final = 3_600_000_000


# -- the workload --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Model:
    provider: str
    name: str
    median_ms: float  # of a 245-token answer
    reasoning: bool


MODELS: Final = {
    m.name: m
    for m in (
        Model("openai", "gpt-4o", 1400, False),
        Model("openai", "gpt-4o-mini", 650, False),
        Model("openai", "o4-mini", 4200, True),
        Model("anthropic", "claude-sonnet-4-5-20250929", 2300, False),
        Model("anthropic", "claude-haiku-4-5-20251001", 800, False),
        Model("google", "gemini-2.5-flash", 700, False),
        Model("google", "gemini-2.5-pro", 3500, True),
        Model("mistral", "mistral-large-latest", 1800, False),
    )
}
# application: (share of users, its models with weights)
APPLICATIONS: Final = {
    "support-bot": (35, (("gpt-4o-mini", 6), ("claude-haiku-4-5-20251001", 3), ("gpt-4o", 1))),
    "doc-search": (25, (("gemini-2.5-flash", 6), ("gpt-4o-mini", 3), ("gemini-2.5-pro", 1))),
    "sales-assistant": (
        15,
        (("claude-sonnet-4-5-20250929", 5), ("gpt-4o", 4), ("mistral-large-latest", 1)),
    ),
    "code-review": (15, (("claude-sonnet-4-5-20250929", 4), ("o4-mini", 3), ("gemini-2.5-pro", 2))),
    "ticket-triage": (10, (("mistral-large-latest", 5), ("gpt-4o-mini", 4), ("o4-mini", 1))),
}
USERS: Final = 200
ORGANISATIONS: Final = 24

_ERRORS: Final = (
    # (share of calls, error body, rate limited, retries, latency median ms)
    (
        0.012,
        {"type": "rate_limit_error", "message": "Rate limit reached for requests per minute",
         "status_code": 429},
        True,
        2,
        150.0,
    ),
    (
        0.010,
        {"type": "overloaded_error", "message": "The server is overloaded, try again later",
         "status_code": 529},
        False,
        1,
        400.0,
    ),
    (0.008, {"type": "APITimeoutError", "message": "Request timed out."}, False, 0, 60_000.0),
)  # fmt: skip


def traffic(hour: datetime) -> float:
    """Relative traffic in a UTC hour: a working-day curve (a fifth of the peak at night,
    the peak at 14:00), weekends at 45 %, and 20 % growth over the month."""
    daylight = max(0.0, math.sin(math.pi * (hour.hour - 6) / 16)) if 6 <= hour.hour < 22 else 0
    weekday = 0.45 if hour.weekday() >= 5 else 1.0
    growth = 0.9 + 0.2 * (1 - (NOW - hour) / SPAN)
    return (0.2 + 0.8 * daylight) * weekday * growth


def micros_of(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def call_times(rng: random.Random, count: int, end: datetime, span: timedelta) -> list[int]:
    """``count`` distinct, sorted times (epoch microseconds) in ``[end - span, end)``,
    spread by :func:`traffic`."""
    start_us, end_us = micros_of(end - span), micros_of(end)
    segments: list[tuple[int, int]] = []  # (start, length) of each hour, cut to the span
    weights: list[float] = []
    at = start_us
    while at < end_us:
        top = min((at // _HOUR_US + 1) * _HOUR_US, end_us)
        segments.append((at, top - at))
        weights.append(traffic(_EPOCH + timedelta(microseconds=at)) * (top - at))
        at = top
    cumulative = list(itertools.accumulate(weights))
    total = cumulative[-1]
    times = []
    for _ in range(count):
        u = rng.random() * total
        i = min(bisect.bisect_right(cumulative, u), len(segments) - 1)
        below = cumulative[i] - weights[i]
        seg_start, length = segments[i]
        times.append(seg_start + min(int((u - below) / weights[i] * length), length - 1))
    times.sort()
    for i in range(1, len(times)):  # distinct, so a cutoff splits the set exactly
        if times[i] <= times[i - 1]:
            times[i] = times[i - 1] + 1
    return times


_new = object.__new__
_set = object.__setattr__


def _uuid(value: int) -> uuid.UUID:
    """``uuid.UUID(int=value)`` without the checks (a valid 128-bit value), as
    :func:`eventlog.ids.uuid7` makes its ids: a million calls are made per load."""
    new = _new(uuid.UUID)
    _set(new, "int", value)
    _set(new, "is_safe", uuid.SafeUUID.unknown)
    return new


def _pick(items: Sequence[Any], u: float) -> Any:
    return items[int(u * len(items))]


@dataclass(frozen=True, slots=True)
class _User:
    id: str
    organisation: str
    home: str
    other: str


class Calls:
    """Makes realistic LLM calls, deterministically from ``seed``."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        rng = self.rng
        self.user_messages = [self._text(int(rng.lognormvariate(5.6, 0.6))) for _ in range(3000)]
        self.answers = [self._text(int(rng.lognormvariate(6.2, 0.5))) for _ in range(3000)]
        self.system = {app: self._text(500) for app in APPLICATIONS}
        apps = list(APPLICATIONS)
        shares = [APPLICATIONS[app][0] for app in apps]
        self.users = []
        for i in range(USERS):
            home = rng.choices(apps, shares)[0]
            other = rng.choice([app for app in apps if app != home])
            org = f"org-{rng.randrange(ORGANISATIONS):02d}"
            self.users.append(_User(f"user-{i:03d}", org, home, other))
        # Zipf-like activity: a few heavy users, a long tail.
        self.user_cum = list(itertools.accumulate(1 / (rank + 1) ** 0.8 for rank in range(USERS)))
        self.models = {
            app: ([MODELS[m] for m, _ in mix], list(itertools.accumulate(w for _, w in mix)))
            for app, (_, mix) in APPLICATIONS.items()
        }

    def _text(self, chars: int) -> str:
        words = self.rng.choices(_WORDS, k=max(2, chars // 5))
        body = " ".join(words)[: max(8, chars)].rstrip()
        return body[:1].upper() + body[1:] + "."

    def _id(self, micros: int) -> uuid.UUID:
        """A UUIDv7 of the call's millisecond, as eventlog's own ids are."""
        bits = self.rng.getrandbits(74)
        value = (micros // 1000) << 80 | 0x7 << 76 | (bits >> 62) << 64 | 0b10 << 62
        return _uuid(value | (bits & 0x3FFF_FFFF_FFFF_FFFF))

    def fresh_id(self, event: ProxyLogEvent) -> ProxyLogEvent:
        return dataclasses.replace(event, id=self._id(micros_of(event.timestamp)))

    def call(self, micros: int) -> ProxyLogEvent:
        rng = self.rng
        r = rng.random
        user = self.users[bisect.bisect_right(self.user_cum, r() * self.user_cum[-1])]
        app = user.home if r() < 0.85 else user.other
        models, cum = self.models[app]
        model = models[bisect.bisect_right(cum, r() * cum[-1])]
        when = _EPOCH + timedelta(microseconds=micros)
        stream = r() < 0.4
        messages = [{"role": "system", "content": self.system[app]}]
        for k in range(1 + 2 * int(r() * 3)):
            pool = self.user_messages if k % 2 == 0 else self.answers
            messages.append(
                {"role": "user" if k % 2 == 0 else "assistant", "content": _pick(pool, r())}
            )
        request = {
            "model": model.name,
            "messages": messages,
            "temperature": _pick((0.0, 0.2, 0.7), r()),
            "max_tokens": 2048,
            "stream": stream,
        }
        error: dict[str, Any] | None = None
        rate_limited = False
        retries = 0
        median_ms = model.median_ms
        failure = r()
        for share, body, limited, tries, failed_ms in _ERRORS:
            if failure < share:
                error, rate_limited, retries, median_ms = dict(body), limited, tries, failed_ms
                break
            failure -= share
        else:
            if r() < 0.03:  # answered after one retry on a 429
                rate_limited, retries = True, 1
        response = None
        ttft = None
        if error is None:
            prompt = 40 + int(rng.lognormvariate(7.0, 0.6))
            cache_read = int(prompt * (0.5 + 0.4 * r())) if r() < 0.4 else 0
            completion = int(rng.lognormvariate(5.5, 0.6))
            reasoning = int(rng.lognormvariate(6.3, 0.7)) if model.reasoning else 0
            completion += reasoning
            latency_ms = median_ms * rng.lognormvariate(0.0, 0.5) * (completion / 245) ** 0.35
            if stream:
                ttft = timedelta(milliseconds=latency_ms * (0.1 + 0.25 * r()))
            response = self._response(model, prompt, completion, cache_read, reasoning)
        else:
            latency_ms = median_ms * rng.lognormvariate(0.0, 0.3)
        waited = sum(rng.uniform(0.5, 2.0) for _ in range(retries))
        in_workflow = r() < 0.25
        return ProxyLogEvent(
            id=self._id(micros),
            timestamp=when,
            request=request,
            response=response,
            provider=model.provider,
            model=model.name,
            latency=timedelta(milliseconds=latency_ms),
            total_latency=timedelta(milliseconds=latency_ms, seconds=waited),
            was_rate_limited=rate_limited,
            num_retries=retries,
            error=error,
            metadata=RequestMetadata(
                application=app,
                environment="staging" if r() < 0.04 else "production",
                organization_id=user.organisation,
                project_id=app,
                user_id=user.id,
                workflow_id=f"{app}-flow" if in_workflow else None,
                workflow_name=f"{app} flow" if in_workflow else None,
                run_id=self._id(micros - 5_000_000) if in_workflow else None,
                step_id=self._id(micros - 1_000) if in_workflow else None,
                step_index=int(r() * 6) if in_workflow else None,
                prompt_id=f"{app}/system",
                prompt_version=1 + int(r() * 4),
                extra={
                    "request_id": f"req_{rng.getrandbits(96):024x}",
                    "session_id": f"sess_{user.id}_{int(r() * 40)}",
                    "route": "/v1/chat/completions",
                    "client": "acme-gateway/2.14.1",
                },
            ),
            internal_metadata=InternalMetadata(
                organization_id=user.organisation, project_id=app, user_id=user.id
            ),
            response_meta={
                "headers": {
                    "x-request-id": f"req_{rng.getrandbits(96):024x}",
                    "x-ratelimit-remaining-requests": str(int(r() * 5000)),
                },
                "region": "us-east-1" if r() < 0.7 else "eu-west-1",
            },
            time_to_first_token=ttft,
        )

    def _response(
        self, model: Model, prompt: int, completion: int, cache_read: int, reasoning: int
    ) -> dict[str, Any]:
        """An answer in the provider's own shape, with its own way of counting tokens."""
        rng = self.rng
        answer = _pick(self.answers, rng.random())
        if model.provider == "anthropic":
            cache_write = int(prompt * 0.6) if not cache_read and rng.random() < 0.15 else 0
            return {
                "id": f"msg_{rng.getrandbits(96):024x}",
                "type": "message",
                "role": "assistant",
                "model": model.name,
                "content": [{"type": "text", "text": answer}],
                "stop_reason": "end_turn",
                "usage": {  # input_tokens excludes the cached parts
                    "input_tokens": prompt - cache_read - cache_write,
                    "output_tokens": completion,
                    "cache_read_input_tokens": cache_read,
                    "cache_creation_input_tokens": cache_write,
                },
            }
        if model.provider == "google":
            return {
                "candidates": [
                    {"content": {"role": "model", "parts": [{"text": answer}]},
                     "finishReason": "STOP"}
                ],
                "modelVersion": model.name,
                "usageMetadata": {  # candidates exclude the thoughts
                    "promptTokenCount": prompt,
                    "candidatesTokenCount": completion - reasoning,
                    "thoughtsTokenCount": reasoning,
                    "cachedContentTokenCount": cache_read,
                    "totalTokenCount": prompt + completion,
                },
            }  # fmt: skip
        return {
            "id": f"chatcmpl-{rng.getrandbits(116):029x}",
            "object": "chat.completion",
            "model": model.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cache_read},
                "completion_tokens_details": {"reasoning_tokens": reasoning},
            },
        }


async def batches_of(
    calls: Calls, times: Sequence[int], size: int, clock: list[float]
) -> AsyncIterator[list[ProxyLogEvent]]:
    """The calls at ``times``, ``size`` at a time, made as they are needed (a million do
    not fit in memory); yields to the loop every 100 calls so the writes in flight go
    on. ``clock[0]`` sums the seconds spent making calls."""
    for start in range(0, len(times), size):
        batch = []
        for i, micros in enumerate(times[start : start + size]):
            if i % 100 == 99:
                await asyncio.sleep(0)
            began = time.perf_counter()
            batch.append(calls.call(micros))
            clock[0] += time.perf_counter() - began
        yield batch


async def write_batches(db: Database, batches: AsyncIterator[list[ProxyLogEvent]]) -> int:
    """Write every batch, with ``db.concurrent_writes`` in flight, as the logger does."""
    pending: set[asyncio.Task[int]] = set()
    written = 0

    async def settle(until: int) -> None:
        nonlocal pending
        while len(pending) > until:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()

    async for batch in batches:
        await settle(db.concurrent_writes - 1)
        pending.add(asyncio.create_task(db.write_log_batch(batch)))
        written += len(batch)
    await settle(0)
    return written


async def listed(events: Sequence[ProxyLogEvent], size: int) -> AsyncIterator[list[ProxyLogEvent]]:
    for start in range(0, len(events), size):
        yield list(events[start : start + size])


# -- where the data sets live ----------------------------------------------------------------


class Place(abc.ABC):
    """The databases of one backend: ``main`` (the data set), ``prune`` (the prune's
    source), ``prune_copy`` (a copy made for each prune), ``write`` (scratch)."""

    backend: str

    @abc.abstractmethod
    def url(self, role: str) -> str: ...

    @abc.abstractmethod
    async def state(self, role: str) -> str:
        """``missing``; ``ours`` (it has the marker table); ``empty`` (no tables, or
        only eventlog's without events: made by an interrupted run); or ``foreign``
        (anything else: never written to, never dropped)."""

    @abc.abstractmethod
    async def create(self, role: str) -> None: ...

    @abc.abstractmethod
    async def drop(self, role: str) -> None: ...

    @abc.abstractmethod
    async def copy(self, source: str, target: str) -> None:
        """``target`` as a copy of ``source`` (a previous ``target`` dropped)."""

    @abc.abstractmethod
    async def empty(self, db: Database) -> None:
        """Empty eventlog's tables between write runs, leaving no work behind."""

    @abc.abstractmethod
    async def settle(self, db: Database) -> float:
        """After a load: the state a live database is kept in; returns the seconds."""

    @abc.abstractmethod
    async def storage(self, db: Database) -> dict[str, Any]: ...

    async def fresh(self, role: str) -> None:
        """Make ``role`` an empty database of this script's (dropping a previous one of
        its own, never one it did not make)."""
        state = await self.mine(role)
        if state == "ours":
            await self.drop(role)
            state = "missing"
        if state == "missing":
            await self.create(role)

    async def mine(self, role: str) -> str:
        """``role``'s :meth:`state`; ``SystemExit`` if it is not this script's."""
        state = await self.state(role)
        if state == "foreign":
            raise SystemExit(
                f"{self.url(role)} holds data this script did not write; "
                "choose another --pg-url database or --sqlite path"
            )
        return state


# What ``open_database(migrate=True)`` makes: a database holding only these is one a
# run of this script made before it wrote its marker.
_OWN_TABLES: Final = frozenset({*(t.name for t in metadata.tables.values()), "alembic_version"})


def _classify(tables: Iterable[str], has_events: Callable[[], bool]) -> str:
    names = set(tables)
    if MARKER_TABLE in names:
        return "ours"
    if names <= _OWN_TABLES and not ("chronicle_events" in names and has_events()):
        return "empty"
    return "foreign"


class PostgresPlace(Place):
    backend = "postgresql"
    _RESERVED: Final = frozenset({"postgres", "test", "template0", "template1"})

    def __init__(self, pg_url: str) -> None:
        server = check_pg_url(pg_url)
        name = server.database or ""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", name) or name in self._RESERVED:
            raise ValueError(
                "--pg-url must name a database of this script's own (lower-case letters, "
                f"digits and _; not {', '.join(sorted(self._RESERVED))}), got {name!r}"
            )
        self.server: URL = server.set(drivername="postgresql")
        self.names = {
            "main": name,
            "prune": f"{name}_prune",
            "prune_copy": f"{name}_prune_copy",
            "write": f"{name}_write",
        }

    def url(self, role: str) -> str:
        return self._dsn(self.names[role])

    def _dsn(self, database: str) -> str:
        return self.server.set(database=database).render_as_string(hide_password=False)

    @contextlib.asynccontextmanager
    async def _connect(self, database: str) -> AsyncIterator[Any]:
        conn = await asyncpg.connect(self._dsn(database), timeout=10)
        try:
            yield conn
        finally:
            await conn.close()

    async def _admin(self, sql: str) -> None:
        async with self._connect("postgres") as conn:
            await conn.execute(sql)

    async def state(self, role: str) -> str:
        name = self.names[role]
        async with self._connect("postgres") as conn:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                return "missing"
        async with self._connect(name) as conn:
            tables = [
                r[0]
                for r in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                )
            ]
            rows = bool(
                "chronicle_events" in tables
                and await conn.fetchval("SELECT EXISTS (SELECT 1 FROM chronicle_events)")
            )
        return _classify(tables, lambda: rows)

    async def create(self, role: str) -> None:
        await self._admin(f'CREATE DATABASE "{self.names[role]}"')

    async def drop(self, role: str) -> None:
        await self._admin(f'DROP DATABASE IF EXISTS "{self.names[role]}" WITH (FORCE)')

    async def copy(self, source: str, target: str) -> None:
        await self.mine(target)
        await self.drop(target)
        await self._admin(
            f'CREATE DATABASE "{self.names[target]}" TEMPLATE "{self.names[source]}" '
            "STRATEGY FILE_COPY"
        )

    async def empty(self, db: Database) -> None:
        async with db.engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {', '.join(EVENTLOG_TABLES)}"))
        async with db.engine.connect() as conn:
            await conn.execute(text("CHECKPOINT"))
            await conn.commit()

    async def settle(self, db: Database) -> float:
        started = time.perf_counter()
        name = db.engine.url.database or ""
        async with self._connect(name) as conn:
            await conn.execute(f"VACUUM (ANALYZE) {', '.join(STORAGE_TABLES)}")
        return time.perf_counter() - started

    async def storage(self, db: Database) -> dict[str, Any]:
        name = db.engine.url.database or ""
        async with self._connect(name) as conn:
            indexes = await conn.fetch(
                """
                SELECT c.relname AS name, am.amname AS kind,
                       pg_relation_size(c.oid) AS bytes, t.relname AS table_name
                FROM pg_index i
                JOIN pg_class c ON c.oid = i.indexrelid
                JOIN pg_am am ON am.oid = c.relam
                JOIN pg_class t ON t.oid = i.indrelid
                WHERE t.relname = ANY($1::text[])
                ORDER BY t.relname, c.relname
                """,
                list(STORAGE_TABLES),
            )
            tables = {}
            for table in STORAGE_TABLES:
                row = await conn.fetchrow(
                    "SELECT pg_relation_size($1::regclass) AS heap, "
                    "pg_table_size($1::regclass) AS with_toast, "
                    "pg_total_relation_size($1::regclass) AS total",
                    table,
                )
                tables[table] = dict(row)
            version = await conn.fetchval("SHOW server_version")
        return {
            "server_version": version,
            "tables": tables,
            "indexes": [dict(r) for r in indexes],
        }

    async def server_version(self) -> str:
        async with self._connect("postgres") as conn:
            return str(await conn.fetchval("SHOW server_version"))


class SqlitePlace(Place):
    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        path = path.expanduser().absolute()
        self.paths = {
            "main": path,
            "prune": path.with_name(f"{path.stem}-prune{path.suffix}"),
            "prune_copy": path.with_name(f"{path.stem}-prune-copy{path.suffix}"),
            "write": path.with_name(f"{path.stem}-write{path.suffix}"),
        }

    def url(self, role: str) -> str:
        return f"sqlite:///{self.paths[role]}"

    async def state(self, role: str) -> str:
        return await asyncio.to_thread(self._state, self.paths[role])

    @staticmethod
    def _state(path: Path) -> str:
        if not path.exists():
            return "missing"
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%'"
                )
            ]

            def rows() -> bool:
                return conn.execute("SELECT 1 FROM chronicle_events LIMIT 1").fetchone() is not None

            return _classify(tables, rows)
        finally:
            conn.close()

    async def create(self, role: str) -> None:
        await asyncio.to_thread(self.paths[role].parent.mkdir, parents=True, exist_ok=True)

    async def drop(self, role: str) -> None:
        def remove() -> None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{self.paths[role]}{suffix}").unlink(missing_ok=True)

        await asyncio.to_thread(remove)

    async def copy(self, source: str, target: str) -> None:
        await self.mine(target)
        await self.drop(target)

        def backup() -> None:
            src = sqlite3.connect(self.paths[source])
            dst = sqlite3.connect(self.paths[target])
            try:
                src.backup(dst)
            finally:
                dst.close()
                src.close()

        await asyncio.to_thread(backup)

    async def empty(self, db: Database) -> None:
        async with db.engine.begin() as conn:
            for table in EVENTLOG_TABLES:
                await conn.execute(text(f"DELETE FROM {table}"))
        async with db.engine.connect() as conn:
            await conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))

    async def settle(self, db: Database) -> float:
        return 0.0  # eventlog runs no ANALYZE on SQLite: measured as users get it

    async def storage(self, db: Database) -> dict[str, Any]:
        path = Path(db.engine.url.database or "")

        def measure() -> dict[str, Any]:
            found: dict[str, Any] = {"file_bytes": path.stat().st_size}
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                rows = conn.execute(
                    "SELECT name, SUM(pgsize) FROM dbstat "
                    "WHERE name LIKE 'chronicle_events%' OR name LIKE '%rollup%' "
                    "OR name LIKE 'sqlite_autoindex_chronicle_events%' "
                    "GROUP BY name ORDER BY name"
                ).fetchall()
                found["objects"] = [{"name": n, "bytes": b} for n, b in rows]
            except sqlite3.Error as err:  # dbstat is a compile-time option
                found["objects_error"] = str(err)
            finally:
                conn.close()
            return found

        return await asyncio.to_thread(measure)


# -- the data sets -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dataset:
    role: str
    key: str
    times: Callable[[], list[int]]  # made only when the set is (re)loaded


async def _marker(db: Database) -> dict[str, Any] | None:
    async with db.engine.connect() as conn:
        row = (await conn.execute(text(f"SELECT * FROM {MARKER_TABLE}"))).mappings().first()
    return None if row is None else dict(row)


async def _llm_calls(db: Database) -> int:
    async with db.engine.connect() as conn:
        found = await conn.execute(
            text("SELECT count(*) FROM chronicle_events WHERE event_type = :t"),
            {"t": analytics.LLM_CALL},
        )
        return int(found.scalar_one())


async def ensure_dataset(
    place: Place,
    dataset: Dataset,
    calls: Calls,
    args: argparse.Namespace,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Load ``dataset`` into its database unless it is already there; the load's figures."""
    expected = args.events if dataset.role == "main" else _prune_set_size(args.prune_events)
    if not args.reload and await place.state(dataset.role) == "ours":
        db = await eventlog.open_database(place.url(dataset.role), migrate=True)
        try:
            marker = await _marker(db)
            if marker and marker["dataset"] == dataset.key and await _llm_calls(db) == expected:
                say(f"{place.backend}: {dataset.role} data set already loaded ({dataset.key})")
                return {**marker, "loaded_now": False}
        finally:
            await db.close()
    await place.fresh(dataset.role)
    db = await eventlog.open_database(place.url(dataset.role), migrate=True)
    try:
        async with db.engine.begin() as conn:
            await conn.execute(
                text(
                    f"CREATE TABLE {MARKER_TABLE} (dataset TEXT PRIMARY KEY, events BIGINT, "
                    "load_seconds DOUBLE PRECISION, generate_seconds DOUBLE PRECISION, "
                    "settle_seconds DOUBLE PRECISION, loaded_at TEXT)"
                )
            )
        times = dataset.times()
        say(f"{place.backend}: loading {len(times):,} calls into {dataset.role} ...")
        clock = [0.0]
        started = time.perf_counter()
        written = await write_batches(
            db,
            _progress(
                batches_of(calls, times, args.batch, clock), len(times), started, say, place.backend
            ),
        )
        load_seconds = time.perf_counter() - started
        settle_seconds = await place.settle(db)
        stored = await _llm_calls(db)
        if stored != written or written != expected:
            raise RuntimeError(f"{place.backend}: wrote {written:,} calls, {stored:,} stored")
        figures = {
            "dataset": dataset.key,
            "events": written,
            "load_seconds": load_seconds,
            "generate_seconds": clock[0],
            "settle_seconds": settle_seconds,
            "loaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        async with db.engine.begin() as conn:
            await conn.execute(
                text(
                    f"INSERT INTO {MARKER_TABLE} VALUES (:dataset, :events, :load_seconds, "
                    ":generate_seconds, :settle_seconds, :loaded_at)"
                ),
                figures,
            )
        say(
            f"{place.backend}: loaded {written:,} calls in {load_seconds:.1f} s "
            f"({written / load_seconds:,.0f}/s; {clock[0]:.1f} s of it making them), "
            f"settled in {settle_seconds:.1f} s"
        )
        return {**figures, "loaded_now": True}
    finally:
        await db.close()


async def _progress(
    batches: AsyncIterator[list[ProxyLogEvent]],
    total: int,
    started: float,
    say: Callable[[str], None],
    backend: str,
) -> AsyncIterator[list[ProxyLogEvent]]:
    done = 0
    step = max(total // 10, 1)
    async for batch in batches:
        yield batch
        before, done = done, done + len(batch)
        if done // step > before // step and done < total:
            elapsed = time.perf_counter() - started
            say(f"{backend}:   {done:,} / {total:,} after {elapsed:.0f} s")


def _prune_set_size(prune_events: int) -> int:
    return prune_events + max(prune_events // 4, 1)


# -- measurements ------------------------------------------------------------------------------


def summary(values: Sequence[float]) -> dict[str, Any]:
    return {"runs": list(values), "median": statistics.median(values), "max": max(values)}


QUERIES: Final[dict[str, tuple[str, Callable[[Database], Awaitable[list[Any]]]]]] = {
    "usage_24h_model": (
        "usage 24h by model",
        lambda db: analytics.usage(db, since="24h", now=NOW, by="model"),
    ),
    "latency_24h_model": (
        "latency 24h by model (exact p50..p99)",
        lambda db: analytics.latency(db, since="24h", now=NOW, by="model"),
    ),
    "usage_24h_model_rollup": (
        "usage 24h by model, source=rollup",
        lambda db: analytics.usage(db, since="24h", now=NOW, by="model", source="rollup"),
    ),
    "usage_30d_day": (
        "usage 30d by day (auto: rollup)",
        lambda db: analytics.usage(db, since="30d", now=NOW, bucket="day"),
    ),
    "usage_30d_day_raw": (
        "usage 30d by day, source=raw",
        lambda db: analytics.usage(db, since="30d", now=NOW, bucket="day", source="raw"),
    ),
    "usage_30d_day_model": (
        "usage 30d by day and model (auto)",
        lambda db: analytics.usage(db, since="30d", now=NOW, bucket="day", by="model"),
    ),
    "latency_30d_day": (
        "latency 30d by day (rollup, approximate)",
        lambda db: analytics.latency(db, since="30d", now=NOW, bucket="day"),
    ),
}


async def measure_queries(db: Database, repeat: int) -> dict[str, Any]:
    """Each query once untimed, then ``repeat`` rounds of all of them, interleaved."""
    times: dict[str, list[float]] = {key: [] for key in QUERIES}
    last: dict[str, list[Any]] = {}
    for key, (_, run) in QUERIES.items():
        last[key] = await run(db)
    for _ in range(repeat):
        for key, (_, run) in QUERIES.items():
            gc.collect()
            started = time.perf_counter()
            last[key] = await run(db)
            times[key].append((time.perf_counter() - started) * 1000)
    figures: dict[str, Any] = {
        key: {**summary(ms), "label": QUERIES[key][0], "rows": len(last[key])}
        for key, ms in times.items()
    }
    both = [
        u + lat for u, lat in zip(times["usage_24h_model"], times["latency_24h_model"], strict=True)
    ]
    figures["breakdown_24h"] = {**summary(both), "label": "24h breakdown: usage + latency"}
    # The rollup must answer what the raw rows answer (a wrong fast figure is no figure).
    auto, raw = last["usage_30d_day"], last["usage_30d_day_raw"]
    figures["rollup_equals_raw"] = [dataclasses.astuple(r) for r in auto] == [
        dataclasses.astuple(r) for r in raw
    ]
    figures["calls_24h"] = sum(r.requests for r in last["usage_24h_model"])
    figures["p95_24h_ms"] = {
        str(r.group["model"]): r.request.p95 for r in last["latency_24h_model"]
    }
    return figures


async def measure_prune(
    place: Place, cutoff: datetime, calls: Calls, args: argparse.Namespace
) -> dict[str, Any]:
    """``prune`` of ``--prune-events`` on a fresh copy each time; then once with a writer
    writing alongside, whose longest batch is the writer's view of the prune's locks."""
    runs = []
    for _ in range(args.repeat):
        await place.copy("prune", "prune_copy")
        db = await eventlog.open_database(place.url("prune_copy"))
        try:
            result = await prune(db, older_than=cutoff)
        finally:
            await db.close()
        if result.events_deleted != args.prune_events:
            raise RuntimeError(f"prune deleted {result.events_deleted:,} events")
        runs.append(result)
    await place.copy("prune", "prune_copy")
    pruner = await eventlog.open_database(place.url("prune_copy"))
    writer = await eventlog.open_database(place.url("prune_copy"))
    waits: list[float] = []
    try:
        stop = asyncio.Event()
        alongside_times = iter(range(micros_of(NOW - timedelta(hours=1)), micros_of(NOW), 1000))

        async def write_alongside() -> None:
            while not stop.is_set():
                batch = [calls.call(next(alongside_times)) for _ in range(WRITER_ALONGSIDE_BATCH)]
                started = time.perf_counter()
                await writer.write_log_batch(batch)
                waits.append(time.perf_counter() - started)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), WRITER_ALONGSIDE_PERIOD)

        task = asyncio.create_task(write_alongside())
        await asyncio.sleep(0.3)  # the writer's first batches, before the prune starts
        alongside = await prune(pruner, older_than=cutoff)
        stop.set()
        await task
    finally:
        await writer.close()
        await pruner.close()
        await place.drop("prune_copy")
    return {
        "events": args.prune_events,
        "batches": runs[0].batches,
        "elapsed_s": summary([r.elapsed for r in runs]),
        "longest_batch_s": summary([r.longest_batch for r in runs]),
        "with_writer": {
            "elapsed_s": alongside.elapsed,
            "longest_batch_s": alongside.longest_batch,
            "writer_batches": len(waits),
            "writer_batch_events": WRITER_ALONGSIDE_BATCH,
            "writer_median_ms": statistics.median(waits) * 1000,
            "writer_max_ms": max(waits) * 1000,
        },
    }


WRITE_VARIANTS: Final = {
    "full": "full writer (rollup + cost)",
    "no_rollup": "rollup off",
    "bare": "rollup and pricing off",
}


async def measure_writes(place: Place, calls: Calls, args: argparse.Namespace) -> dict[str, Any]:
    """The same calls (fresh ids each run) by the full writer, without the rollup, and
    without the rollup and pricing, interleaved, into an emptied scratch database."""
    count = args.write_events
    span = timedelta(seconds=max(count / 1000, 1))  # 1,000 calls a second of traffic
    events = [calls.call(t) for t in call_times(calls.rng, count, NOW, span)]
    await place.fresh("write")
    dbs: dict[str, Database] = {}
    rates: dict[str, list[float]] = {key: [] for key in WRITE_VARIANTS}
    rollup_rows = 0
    try:
        for key in WRITE_VARIANTS:
            db = dbs[key] = await eventlog.open_database(place.url("write"), migrate=True)
            if key != "full":
                db._rollup = None
            if key == "bare":
                db._prices = None
                db._prices_loaded = float("inf")  # and never loaded
        for db in dbs.values():  # warm up: connections, statements, prices
            warm = [calls.fresh_id(e) for e in events[: min(2000, count)]]
            await write_batches(db, listed(warm, WRITE_BATCH))
        order = list(dbs)
        for round_ in range(args.repeat):
            # A B C, B C A, C A B ...: no writer always runs first after the warm-up.
            for key in order[round_ % 3 :] + order[: round_ % 3]:
                db = dbs[key]
                await place.empty(db)
                run = [calls.fresh_id(e) for e in events]
                gc.collect()
                started = time.perf_counter()
                await write_batches(db, listed(run, WRITE_BATCH))
                rates[key].append(count / (time.perf_counter() - started))
                if await _llm_calls(db) != count:
                    raise RuntimeError(f"{place.backend}: the {key} writer lost calls")
                if key == "full":
                    rollup_rows = (await rollup_figures(db))["rows"]
    finally:
        for db in dbs.values():
            await db.close()
        await place.drop("write")
    medians = {key: statistics.median(values) for key, values in rates.items()}
    keys = [
        len({_rollup_key(e) for e in events[i : i + WRITE_BATCH]})
        for i in range(0, count, WRITE_BATCH)
    ]
    user_keys = [
        len({_user_key(e) for e in events[i : i + WRITE_BATCH]})
        for i in range(0, count, WRITE_BATCH)
    ]
    return {
        "events": count,
        "batch": WRITE_BATCH,
        "rollup_keys_per_batch": statistics.mean(keys),
        "user_keys_per_batch": statistics.mean(user_keys),
        "variants": {key: summary(values) for key, values in rates.items()},
        "full_over_no_rollup": medians["full"] / medians["no_rollup"],
        "full_over_bare": medians["full"] / medians["bare"],
        "no_rollup_over_bare": medians["no_rollup"] / medians["bare"],
        "rollup_rows_full_run": rollup_rows,
    }


def _rollup_key(event: ProxyLogEvent) -> tuple[Any, ...]:
    """The hourly rollup row an LLM call adds to (see :mod:`eventlog.rollup`)."""
    internal, meta = event.internal_metadata, event.metadata
    return (
        event.timestamp.replace(minute=0, second=0, microsecond=0),
        event.model,
        event.provider,
        meta.application,
        meta.environment,
        internal.project_id,
    )


def _user_key(event: ProxyLogEvent) -> tuple[Any, ...]:
    """The per-user daily rollup row an LLM call adds to."""
    internal = event.internal_metadata
    return (
        _rollup_key(event)[1:],
        event.timestamp.date(),
        internal.organization_id,
        internal.user_id,
    )


async def rollup_figures(db: Database) -> dict[str, Any]:
    async with db.engine.connect() as conn:
        tables = {
            table: int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())
            for table in STORAGE_TABLES[1:]
        }
        hours = (
            await conn.execute(text("SELECT count(DISTINCT hour) FROM eventlog_rollup_hourly"))
        ).scalar_one()
    rows = tables["eventlog_rollup_hourly"]
    events = await _llm_calls(db)
    return {
        "rows": rows,
        "tables": tables,
        "hours": int(hours),
        "events": events,
        "events_per_row": events / rows if rows else None,
    }


def _dataset_key(schema: str, seed: int, events: int) -> str:
    return (
        f"v{DATASET_VERSION} schema={schema} seed={seed} events={events} end={NOW:%Y-%m-%dT%H:%M}Z"
    )


async def run_backend(
    place: Place, args: argparse.Namespace, say: Callable[[str], None]
) -> dict[str, Any]:
    # One maker per data set, so each set is the same whether or not another was loaded.
    schema = schema_fingerprint()
    calls = Calls(args.seed)
    main = Dataset(
        "main",
        _dataset_key(schema, args.seed, args.events),
        lambda: call_times(calls.rng, args.events, NOW, SPAN),
    )
    prune_size = _prune_set_size(args.prune_events)
    prune_times = call_times(Calls(args.seed + 1).rng, prune_size, NOW, SPAN)
    cutoff = _EPOCH + timedelta(microseconds=prune_times[args.prune_events])
    prune_set = Dataset(
        "prune",
        _dataset_key(schema, args.seed + 1, prune_size),
        lambda: prune_times,
    )
    figures: dict[str, Any] = {"load": await ensure_dataset(place, main, calls, args, say)}
    db = await eventlog.open_database(place.url("main"))
    try:
        say(f"{place.backend}: queries, {args.repeat} rounds ...")
        figures["queries"] = await measure_queries(db, args.repeat)
        figures["rollup"] = await rollup_figures(db)
        figures["storage"] = await place.storage(db)
    finally:
        await db.close()
    figures["prune_load"] = await ensure_dataset(place, prune_set, Calls(args.seed + 1), args, say)
    say(f"{place.backend}: prune of {args.prune_events:,} events, {args.repeat} copies ...")
    figures["prune"] = await measure_prune(place, cutoff, Calls(args.seed + 2), args)
    say(f"{place.backend}: write path, {args.write_events:,} calls x 3 writers x {args.repeat} ...")
    figures["write"] = await measure_writes(place, Calls(args.seed + 3), args)
    if args.cleanup:
        for role in ("main", "prune", "prune_copy", "write"):
            await place.drop(role)
    return figures


# -- the report --------------------------------------------------------------------------------

_LABEL = 46
_CELL = 26


def _pair(median: float, other: float, fmt: str = ",.1f") -> str:
    return f"{median:>15{fmt}}{other:>11{fmt}}"


def _one(value: Any, fmt: str = ",") -> str:
    return f"{'-' if value is None else format(value, fmt):>{_CELL}}"


def _line(label: str, cells: Iterable[str], note: str = "") -> None:
    print(f"{label:<{_LABEL}}{''.join(cells)}{'  ' + note if note else ''}")


def _mark(met: bool) -> str:
    return "ok" if met else "MISSED"


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each figure with a target (issue 6), met or not, at the median and at the max."""
    found = []
    for backend, figures in report["backends"].items():
        rows = [
            (figures["queries"][key]["label"], figures["queries"][key], 1.0, target)
            for (key, on), target in TARGETS_MS.items()
            if on == backend
        ]
        rows.append(
            (
                "prune: longest batch (lock hold)",
                figures["prune"]["longest_batch_s"],
                1000.0,
                PRUNE_LOCK_TARGET_S * 1000,
            )
        )
        for label, figure, scale, target in rows:
            median, top = figure["median"] * scale, figure["max"] * scale
            found.append(
                {
                    "backend": backend,
                    "figure": label,
                    "target_ms": target,
                    "median_ms": median,
                    "max_ms": top,
                    "met_median": median < target,
                    "met_max": top < target,
                }
            )
    return found


def print_report(report: dict[str, Any]) -> None:
    backends = list(report["backends"])
    data = [report["backends"][b] for b in backends]
    machine = report["machine"]
    print()
    print(
        f"{report['events']:,} LLM calls over the 30 days to {NOW:%Y-%m-%d %H:%M} UTC; "
        f"{report['repeat']} rounds; {machine['cpu_count']} CPUs ({machine['cpu_model']}); "
        f"Python {machine['python']}, SQLite {machine['sqlite_library']}"
        + (f", PostgreSQL {report['server_version']}" if report.get("server_version") else "")
        + f"; eventlog {report['git_rev']}"
    )
    pairs = [f"{b + ' median':>15}{'max':>11}" for b in backends]
    targets_by = {(t["backend"], t["figure"]): t for t in report["targets"]}

    def marks(label: str) -> str:
        found = [targets_by.get((b, label)) for b in backends]
        return "; ".join(
            f"{t['backend']} < {t['target_ms']:.0f} ms: {_mark(t['met_median'])}"
            for t in found
            if t is not None
        )

    print()
    _line("a/b. queries, ms", pairs, "target (median)")
    for key in (*QUERIES, "breakdown_24h"):
        label = data[0]["queries"][key]["label"]
        _line(
            label,
            (_pair(d["queries"][key]["median"], d["queries"][key]["max"]) for d in data),
            marks(label),
        )
    _line(
        "  30d by day: raw / rollup (medians)",
        (
            _one(
                d["queries"]["usage_30d_day_raw"]["median"]
                / d["queries"]["usage_30d_day"]["median"],
                ".1f",
            )
            for d in data
        ),
    )
    _line(
        "  rollup's answer = raw answer",
        (_one(_yes(d["queries"]["rollup_equals_raw"]), "") for d in data),
    )
    _line("  calls in the 24h window", (_one(d["queries"]["calls_24h"]) for d in data))

    print()
    _line(f"c. prune of {report['prune_events']:,} events", pairs, "target")
    _line(
        "  total, s",
        (
            _pair(d["prune"]["elapsed_s"]["median"], d["prune"]["elapsed_s"]["max"], ",.2f")
            for d in data
        ),
    )
    lock = "prune: longest batch (lock hold)"
    _line(
        "  longest batch (lock hold), ms",
        (
            _pair(
                d["prune"]["longest_batch_s"]["median"] * 1000,
                d["prune"]["longest_batch_s"]["max"] * 1000,
            )
            for d in data
        ),
        marks(lock),
    )
    _line("  batches (5,000 rows each)", (_one(d["prune"]["batches"]) for d in data))
    _line(
        "  with a writer alongside: total, s",
        (_one(d["prune"]["with_writer"]["elapsed_s"], ",.2f") for d in data),
    )
    _line(
        "    its longest batch, ms",
        (_one(d["prune"]["with_writer"]["longest_batch_s"] * 1000, ",.1f") for d in data),
    )
    _line(
        "    writer's batches of 100: median, ms",
        (_one(d["prune"]["with_writer"]["writer_median_ms"], ",.1f") for d in data),
    )
    _line(
        "    writer's longest batch, ms",
        (_one(d["prune"]["with_writer"]["writer_max_ms"], ",.1f") for d in data),
    )

    print()
    _line(
        f"d. write path, {report['write_events']:,} calls, events/s",
        [f"{b + ' median':>15}{'slowest':>11}" for b in backends],
    )
    for key, label in WRITE_VARIANTS.items():
        _line(
            label,
            (
                _pair(
                    d["write"]["variants"][key]["median"],
                    min(d["write"]["variants"][key]["runs"]),
                    ",.0f",
                )
                for d in data
            ),
        )
    _line(
        "  hourly rollup rows upserted per batch of 1,000",
        (_one(d["write"]["rollup_keys_per_batch"], ",.0f") for d in data),
    )
    _line(
        "  per-user daily rows upserted per batch of 1,000",
        (_one(d["write"]["user_keys_per_batch"], ",.0f") for d in data),
    )
    for field, label in (
        ("full_over_no_rollup", "  full / rollup off"),
        ("full_over_bare", "  full / rollup and pricing off"),
        ("no_rollup_over_bare", "  rollup off / rollup and pricing off"),
    ):
        _line(label, (_one(d["write"][field], ".3f") for d in data))

    print()
    _line("data set", (f"{b:>{_CELL}}" for b in backends))
    _line(
        "load through write_log_batch, s",
        (
            _one(f"{d['load']['load_seconds']:,.1f}{'' if d['load']['loaded_now'] else '*'}", "")
            for d in data
        ),
    )
    _line(
        "  calls/s", (_one(d["load"]["events"] / d["load"]["load_seconds"], ",.0f") for d in data)
    )
    _line(
        "  of which making the calls, s",
        (_one(d["load"]["generate_seconds"], ",.1f") for d in data),
    )
    _line(
        "  then VACUUM (ANALYZE), s",
        (_one(d["load"]["settle_seconds"] or None, ",.1f") for d in data),
    )
    _line("rollup rows", (_one(d["rollup"]["rows"]) for d in data))
    _line("  hours", (_one(d["rollup"]["hours"]) for d in data))
    _line("  calls per rollup row", (_one(d["rollup"]["events_per_row"], ",.2f") for d in data))
    if not all(d["load"]["loaded_now"] for d in data):
        print("* loaded by an earlier run: its time, from the marker row")
    for backend, d in zip(backends, data, strict=True):
        storage = d["storage"]
        print()
        if backend == "postgresql":
            print("PostgreSQL storage, MB")
            for table, sizes in storage["tables"].items():
                print(
                    f"  {table:<44} heap {sizes['heap'] / 1e6:9.1f}   with TOAST "
                    f"{sizes['with_toast'] / 1e6:9.1f}   with indexes {sizes['total'] / 1e6:9.1f}"
                )
            for index in storage["indexes"]:
                print(f"  {index['name']:<44} {index['kind']:<5} {index['bytes'] / 1e6:9.2f}")
        else:
            print(f"SQLite storage: the file, {storage['file_bytes'] / 1e6:,.1f} MB")
            for item in storage.get("objects", []):
                print(f"  {item['name']:<44} {item['bytes'] / 1e6:15.2f}")
    print()
    missed = [t for t in report["targets"] if not t["met_median"]]
    print(f"Targets: {len(report['targets']) - len(missed)} of {len(report['targets'])} met")
    for t in missed:
        print(
            f"MISSED: {t['backend']} {t['figure']}: median {t['median_ms']:,.1f} ms "
            f"(max {t['max_ms']:,.1f}), target < {t['target_ms']:,.0f} ms"
        )
    print(f"took {report['seconds']:,.0f} s in all")


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def _git_rev() -> str:
    here = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "eventlog"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        diff = subprocess.run(
            ["git", "diff", "HEAD", "--", "eventlog", "migrations"],
            cwd=here,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    if not dirty and not diff:
        return rev
    # Others edit the code while this runs: the diff's hash says which edits were in.
    return f"{rev} + uncommitted changes in eventlog/ (diff {hashlib.sha1(diff).hexdigest()[:8]})"


def schema_fingerprint() -> str:
    """A hash of eventlog's tables and columns: a stored data set made with other
    tables is loaded again (migrations may have been edited in place)."""
    tables = sorted(metadata.tables.values(), key=lambda t: t.name)
    shape = ";".join(f"{t.name}:{','.join(c.name for c in t.columns)}" for t in tables)
    return hashlib.sha1(shape.encode()).hexdigest()[:8]


def positive(value: str) -> int:
    number = int(value.replace("_", "").replace(",", ""))
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=positive, default=1_000_000)
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="a database of its own")
    parser.add_argument("--sqlite", type=Path, default=DEFAULT_SQLITE)
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--repeat", type=positive, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--reload", action="store_true", help="load the data sets again")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=positive, default=2000, help="calls per load batch")
    parser.add_argument("--prune-events", type=positive, default=100_000)
    parser.add_argument("--write-events", type=positive, default=100_000)
    parser.add_argument(
        "--cleanup", action="store_true", help="drop every database and file made, at the end"
    )
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not args.backends or set(args.backends) - {"postgresql", "sqlite"}:
        parser.error("--backends must be some of postgresql,sqlite")
    if "postgresql" in args.backends:
        try:
            args.place_pg = PostgresPlace(args.pg_url)
        except ValueError as err:
            parser.error(str(err))
    return args


async def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    began = time.perf_counter()

    def say(line: str) -> None:
        print(f"[{time.perf_counter() - began:7.1f} s] {line}", flush=True)

    places: list[Place] = []
    for backend in args.backends:
        places.append(args.place_pg if backend == "postgresql" else SqlitePlace(args.sqlite))
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "events": args.events,
        "repeat": args.repeat,
        "prune_events": args.prune_events,
        "write_events": args.write_events,
        "seed": args.seed,
        "now": NOW.isoformat(),
        "git_rev": _git_rev(),
        "machine": _machine(),
        "backends": {},
    }
    for place in places:
        if isinstance(place, PostgresPlace):
            report["server_version"] = await place.server_version()
        report["backends"][place.backend] = await run_backend(place, args, say)
    report["targets"] = targets(report)
    report["seconds"] = time.perf_counter() - began
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    print_report(report)
    return report


if __name__ == "__main__":
    asyncio.run(main())
