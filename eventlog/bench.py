"""``eventlog bench``: eventlog side by side with what an application would otherwise do.

One process run, one pre-generated workload of LLM-proxy events (a chat request of 2-4
messages, about 1.2 KB; a response of about 0.8 KB with ``usage``; metadata: about 2.6 KB
of JSON and text per event), written into the real ``chronicle_events`` table (created by
``open_database(url, migrate=True)``) by each contender in turn, interleaved
(A B C ... A B C ...) for ``rounds`` rounds, on PostgreSQL and on SQLite:

1. ``naive``: one ``INSERT`` and one commit per event (SQLAlchemy Core), on a tenth of
   the events (it is slow; its figure is events per second all the same);
2. ``orm``: SQLAlchemy ORM, ``session.add_all`` + commit per batch of 1,000;
3. ``core``: SQLAlchemy Core ``conn.execute(insert(table), rows)`` per batch of 1,000;
4. ``chronicle``: chronicle's method, one multi-row ``INSERT ... VALUES`` of 100 rows per
   transaction, raw SQL with positional parameters on the raw driver (asyncpg, aiosqlite);
5. ``limit``: PostgreSQL binary ``COPY`` (asyncpg ``copy_records_to_table``), SQLite raw
   ``executemany``, of rows serialised *before* timing, 1,000 rows per transaction;
   ``limit_default`` (PostgreSQL) is the same COPY into a copy of the table with
   PostgreSQL's default column storage (pglz unless the server says otherwise), whatever
   eventlog's migrations chose;
6. ``eventlog``: ``send()`` of every pre-built event, the writer batching (1,000, 50 ms)
   and committing; timed from the first ``send()`` until the writer task has returned.

Contenders 1-4 are timed from the events (converting them to rows is part of their
work, as it is of eventlog's); 5 is timed from pre-serialised rows: the database's limit.

Then, for eventlog alone: the cost of ``send()`` on the caller, send-to-commit latency at
a steady rate, the event loop's lag while the writer runs flat out, memory per queued
event while the database is stopped, and throughput as the table grows.

The bench only touches what it creates: a database ``eventlog_bench_<random>`` on the
PostgreSQL server (on this machine only), dropped at the end, and a temporary SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import math
import os
import platform
import random
import secrets
import shlex
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, Final, Literal

import aiosqlite
import asyncpg
import orjson
from rich import box
from rich.console import Console
from rich.table import Table
from sqlalchemy import event as sa_event
from sqlalchemy import insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase

import eventlog
from eventlog import (
    Database,
    InternalMetadata,
    LoggerStats,
    ProxyLogEntry,
    ProxyLogEvent,
    RequestMetadata,
)
from eventlog.exceptions import DatabaseError
from eventlog.rows import event_row
from eventlog.schema import chronicle_events

__all__ = [
    "BACKENDS",
    "CONTENDERS",
    "DEFAULT_PG_URL",
    "PG_URL_ENV",
    "BenchConfig",
    "check_pg_url",
    "print_report",
    "run_bench",
    "write_json",
]

PG_URL_ENV: Final = "EVENTLOG_BENCH_POSTGRES_URL"
DEFAULT_PG_URL: Final = "postgresql://postgres@127.0.0.1:5432/test"
BACKENDS: Final = ("postgresql", "sqlite")
Backend = Literal["postgresql", "sqlite"]

CONTENDERS: Final = ("naive", "orm", "core", "chronicle", "limit", "limit_default", "eventlog")
"""Every contender's key, in the order they run in each round (``limit_default`` only
on PostgreSQL)."""

_LABELS: Final = {
    "naive": "1 naive",
    "orm": "2 SQLAlchemy ORM",
    "core": "3 SQLAlchemy Core",
    "chronicle": "4 chronicle's VALUES",
    "limit": "5 limit: {limit}",
    "limit_default": "5d COPY, {default} table",
    "eventlog": "6 eventlog",
}
_LEGEND: Final = (
    "1 one INSERT + commit per event (SQLAlchemy Core); 2 ORM add_all + commit per 1,000; "
    "3 Core executemany per 1,000; 4 one multi-row INSERT ... VALUES per 100 rows, raw "
    "driver; 5 {limit} of rows serialised before timing, 1,000 per transaction; "
    "{default}6 send() to commit, batch_size=1,000, debounce_time=0.05. "
    "range: slowest and fastest round; ratio: eventlog's median / the contender's."
)

# Minimum ratios eventlog / contender (issue 3's targets), per backend.
_RATIO_TARGETS: Final[dict[str, dict[str, float]]] = {
    "postgresql": {
        "naive": 8.0,
        "core": 1.6,
        "chronicle": 2.0,
        "limit": 0.9,
        "limit_default": 1.4,
    },
    "sqlite": {"naive": 25.0, "limit": 0.9},
}
_SEND_MEDIAN_TARGET_US: Final = 1.0
_SEND_P99_TARGET_US: Final = 10.0
_LATENCY_P99_TARGET_MS: Final = 100.0
_LAG_P99_TARGET_MS: Final = 5.0
_MEMORY_TARGET_BYTES: Final = 8192.0
_GROWTH_TARGET: Final = 0.8  # throughput at the larger table within 20 % of the empty one

_BATCH: Final = 1000  # rows per transaction for the batch contenders, and eventlog's batch
_CHRONICLE_BATCH: Final = 100
_DEBOUNCE: Final = 0.05
_LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})


# -- configuration ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchConfig:
    """What to run, and how big. :meth:`quick` is the smoke size."""

    pg_url: str = DEFAULT_PG_URL
    """A PostgreSQL server on this machine; the bench creates (and drops) its own
    database there, so the role needs ``CREATEDB``."""
    sqlite_path: Path | None = None
    """The SQLite file to create (it must not exist); default: a temporary file."""
    backends: tuple[Backend, ...] = BACKENDS
    events: int = 20_000
    """Events per contender per round (the naive contender writes a tenth of them)."""
    rounds: int = 3
    growth_rows: int = 0
    """Rows in the table before the second growth segment; each segment is a tenth of
    this. 0 (the default) skips the growth part: filling a table to 1,000,000 realistic
    rows takes ~3 minutes here, more than the rest of the run, so it is asked for with
    ``--growth-rows 1000000``."""
    latency_seconds: float = 5.0
    latency_rate: int = 1_000
    send_samples: int = 100_000
    memory_events: int = 20_000
    warmup_events: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("events", "rounds", "latency_rate", "send_samples", "memory_events"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("growth_rows", "warmup_events"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if not (math.isfinite(self.latency_seconds) and self.latency_seconds > 0):
            raise ValueError(f"latency_seconds must be positive, got {self.latency_seconds!r}")
        if not self.backends or any(b not in BACKENDS for b in self.backends):
            raise ValueError(
                f"backends must be some of {', '.join(BACKENDS)}, got {','.join(self.backends)!r}"
            )
        if len(set(self.backends)) != len(self.backends):
            raise ValueError(f"backends must not repeat, got {','.join(self.backends)!r}")
        if "postgresql" in self.backends:
            check_pg_url(self.pg_url)
        if self.sqlite_path is not None and self.sqlite_path.exists():
            raise ValueError(
                f"sqlite path {str(self.sqlite_path)!r} exists; the bench only writes "
                "a file of its own (give a new path, or none for a temporary file)"
            )

    @classmethod
    def quick(cls, **options: Any) -> BenchConfig:
        """The smoke size: every figure, in seconds rather than minutes."""
        sizes: dict[str, Any] = {
            "events": 500,
            "rounds": 1,
            "growth_rows": 2_000,
            "latency_seconds": 0.5,
            "send_samples": 4_000,
            "memory_events": 2_000,
            "warmup_events": 50,
        }
        sizes.update(options)
        return cls(**sizes)

    @property
    def naive_events(self) -> int:
        """The naive contender's share of the workload."""
        return max(1, self.events // 10)


def check_pg_url(url: str) -> URL:
    """The parsed PostgreSQL URL; ``ValueError`` unless it is a server on this machine."""
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise ValueError(f"PostgreSQL url is not a URL: {url!r}") from err
    if parsed.drivername not in ("postgresql", "postgres", "postgresql+asyncpg"):
        raise ValueError(f"PostgreSQL url must start with postgresql://, got {url!r}")
    if parsed.host not in _LOOPBACK:
        raise ValueError(
            "the bench creates and drops a database of its own, so it only runs against a "
            f"PostgreSQL server on this machine (host 127.0.0.1); got host {parsed.host!r}"
        )
    return parsed


# -- the workload ---------------------------------------------------------------------------

_WORD_TEXT: Final = """
    the a to of and in is for that you it with on as are be this can your we will not
    have or by from at an if which their more when use data model request user service
    please answer question context following based provide summary customer account
    order issue error response time include example step first should would could also
    only each other need about into than then these them there some such what how why
    deploy build region cluster latency token prompt document section policy refund plan
    billing invoice ticket report table query result value field update status release
    feature support network storage database cache retry limit quota access key project
"""
_WORDS: Final = tuple(_WORD_TEXT.split())
_MODELS: Final = (
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4"),
    ("google", "gemini-2.0-flash"),
    ("mistral", "mistral-large"),
)
_APPLICATIONS: Final = ("support-bot", "doc-search", "sales-assistant", "code-review")
_ALNUM: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


class _Timeline:
    """Strictly increasing event times (1 ms apart) and UUIDv7 ids that sort with them,
    as an append-only log receives them."""

    def __init__(self, rng: random.Random, start: datetime) -> None:
        self._rng = rng
        self._micros = int(start.timestamp() * 1_000_000)

    def next(self) -> tuple[uuid.UUID, datetime]:
        self._micros += 1000
        ms = self._micros // 1000
        bits = (ms << 80) | (0x7 << 76) | (self._rng.getrandbits(12) << 64)
        bits |= (0b10 << 62) | self._rng.getrandbits(62)
        when = datetime.fromtimestamp(self._micros / 1_000_000, UTC)
        return uuid.UUID(int=bits), when

    def skip(self, count: int) -> datetime:
        """Reserve the next ``count`` times (1 ms apart); return the first."""
        first = datetime.fromtimestamp((self._micros + 1000) / 1_000_000, UTC)
        self._micros += 1000 * count
        return first


class _Workload:
    """Makes realistic LLM-proxy events, deterministically from ``seed``."""

    def __init__(self, seed: int, timeline_start: datetime | None = None) -> None:
        self.rng = random.Random(seed)
        start = timeline_start or datetime.now(UTC) - timedelta(days=1)
        self.timeline = _Timeline(random.Random(seed + 1), start)

    def _text(self, chars: int) -> str:
        words = self.rng.choices(_WORDS, k=max(1, chars // 5))
        text = " ".join(words)[:chars].rstrip()
        return text[:1].upper() + text[1:] + "."

    def _token(self, prefix: str, length: int) -> str:
        return prefix + "".join(self.rng.choices(_ALNUM, k=length))

    def event(self) -> ProxyLogEvent:
        """One model call, about 2.6 KB serialised."""
        rng = self.rng
        provider, model = rng.choice(_MODELS)
        application = rng.choice(_APPLICATIONS)
        number = rng.randrange(5000)
        user = f"user-{number:04d}"
        org = f"org-{number % 40:02d}"  # a user belongs to one organization
        turns = rng.randint(2, 4)  # user / assistant messages after the system prompt
        share = 620 // turns
        messages = [{"role": "system", "content": self._text(340)}]
        for k in range(turns):
            role = "user" if (turns - k) % 2 == 1 else "assistant"
            messages.append({"role": role, "content": self._text(share)})
        request = {
            "model": model,
            "messages": messages,
            "temperature": rng.choice((0.0, 0.2, 0.7)),
            "max_tokens": 1024,
            "stream": False,
            "user": user,
        }
        prompt_tokens = 40 + sum(len(m["content"]) for m in messages) // 4
        answer = self._text(rng.randint(300, 420))
        completion_tokens = len(answer) // 4
        response = {
            "id": self._token("chatcmpl-", 29),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": self._token("fp_", 10),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        }
        in_workflow = rng.random() < 0.3
        extra = {
            "request_id": self._token("req_", 24),
            "client_ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
            "user_agent": "acme-gateway/2.14.1",
            "session_id": self._token("sess_", 20),
            "route": "/v1/chat/completions",
            "feature_flags": ["streaming-off", "cache-v2"],
        }
        ident, when = self.timeline.next()
        latency = rng.lognormvariate(0.0, 0.4) * 1.2
        retries = 1 if rng.random() < 0.03 else 0
        return ProxyLogEvent(
            id=ident,
            timestamp=when,
            request=request,
            response=response,
            provider=provider,
            model=model,
            latency=timedelta(seconds=latency),
            total_latency=timedelta(seconds=latency + retries * 0.8),
            was_rate_limited=retries > 0,
            num_retries=retries,
            metadata=RequestMetadata(
                application=application,
                environment="production",
                organization_id=org,
                project_id=application,
                user_id=user,
                workflow_id="answer-ticket" if in_workflow else None,
                workflow_name="Answer ticket" if in_workflow else None,
                run_id=uuid.UUID(int=rng.getrandbits(128)) if in_workflow else None,
                step_id=uuid.UUID(int=rng.getrandbits(128)) if in_workflow else None,
                step_index=rng.randrange(5) if in_workflow else None,
                prompt_id=f"{application}/system",
                prompt_version=rng.randint(1, 4),
                extra=extra,
            ),
            internal_metadata=InternalMetadata(
                organization_id=org, project_id=application, user_id=user
            ),
            response_meta={
                "headers": {
                    "x-ratelimit-remaining-requests": str(rng.randrange(5000)),
                    "x-ratelimit-remaining-tokens": str(rng.randrange(800_000)),
                    "x-request-id": self._token("req_", 24),
                    "openai-processing-ms": str(int(latency * 1000)),
                },
                "region": "us-east-1",
            },
        )

    def events(self, count: int) -> list[ProxyLogEvent]:
        return [self.event() for _ in range(count)]

    def copies(self, pool: Sequence[ProxyLogEvent], count: int) -> list[ProxyLogEvent]:
        """``count`` events with new ids and later times, sharing ``pool``'s payloads
        (for the large runs, where generating every payload would take minutes)."""
        result = []
        for i in range(count):
            ident, when = self.timeline.next()
            result.append(dataclasses.replace(pool[i % len(pool)], id=ident, timestamp=when))
        return result


def _payload_bytes(event: ProxyLogEvent) -> int:
    """The event's size as stored: JSON columns serialised, text and other values as text."""
    total = 0
    for value in event_row(event).values():
        if value is None:
            continue
        if isinstance(value, (dict, list)):
            total += len(orjson.dumps(value))
        elif isinstance(value, str):
            total += len(value.encode())
        else:
            total += len(str(value))
    return total


# -- rows as the raw drivers take them ------------------------------------------------------

_COLUMNS: Final = tuple(event_row(ProxyLogEvent()))
_JSON_COLUMNS: Final = frozenset(
    {"chat_request", "chat_response", "error", "meta", "response_meta"}
)
_UUID_COLUMNS: Final = frozenset({"id", "run_id", "step_id"})
_TIME_COLUMNS: Final = frozenset({"created_at"})
_ID_INDEX: Final = _COLUMNS.index("id")
_TIME_INDEX: Final = _COLUMNS.index("created_at")

Record = tuple[Any, ...]


def _json_text(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _uuid_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _sqlite_time(value: Any) -> str | None:
    # SQLAlchemy's SQLite DATETIME text, as eventlog stores it: UTC, microseconds.
    if value is None:
        return None
    return str(value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds"))


def _record_encoder(dialect: Backend) -> Callable[[dict[str, Any]], Record]:
    """Row dict -> tuple in :data:`_COLUMNS` order, with values as the raw driver takes
    them: JSON as text; on SQLite also ids and times as text (as eventlog stores them)."""
    converters: list[Callable[[Any], Any] | None] = []
    for column in _COLUMNS:
        if column in _JSON_COLUMNS:
            converters.append(_json_text)
        elif dialect == "sqlite" and column in _UUID_COLUMNS:
            converters.append(_uuid_text)
        elif dialect == "sqlite" and column in _TIME_COLUMNS:
            converters.append(_sqlite_time)
        else:
            converters.append(None)
    pairs = tuple(zip(_COLUMNS, converters, strict=True))

    def encode(row: dict[str, Any]) -> Record:
        return tuple(row[c] if f is None else f(row[c]) for c, f in pairs)

    return encode


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _values_sql(dialect: Backend, rows: int) -> str:
    """``INSERT INTO chronicle_events (...) VALUES (...), (...)`` for ``rows`` rows."""
    width = len(_COLUMNS)
    if dialect == "postgresql":
        groups = (
            "(" + ",".join(f"${r * width + c + 1}" for c in range(width)) + ")" for r in range(rows)
        )
    else:
        one = "(" + ",".join("?" * width) + ")"
        groups = (one for _ in range(rows))
    return f"INSERT INTO chronicle_events ({', '.join(_COLUMNS)}) VALUES " + ", ".join(groups)


def _insert_sql() -> str:
    marks = ", ".join("?" * len(_COLUMNS))
    return f"INSERT INTO chronicle_events ({', '.join(_COLUMNS)}) VALUES ({marks})"


class _Base(DeclarativeBase):
    pass


class _EventRecord(_Base):
    """The ORM contender's mapped class, on eventlog's own ``chronicle_events`` table."""

    __table__ = chronicle_events


# -- one backend: its database, connections and the contenders ----------------------------


def _orjson_text(value: Any) -> str:
    return orjson.dumps(value).decode()


@dataclass(slots=True)
class _Backend:
    """A bench database of one backend, with a connection for each way of writing."""

    dialect: Backend
    url: URL  # SQLAlchemy async URL of the bench database
    db: Database  # eventlog's, for the eventlog contender
    engine: AsyncEngine  # a plain SQLAlchemy engine, for contenders 1-3
    raw: Any  # asyncpg.Connection or aiosqlite.Connection, for 4, 5 and housekeeping
    server_version: str
    storage: str  # the JSON columns' type and compression
    default_storage: str  # PostgreSQL's default compression (contender 5d's), or ""
    encode: Callable[[dict[str, Any]], Record] = field(init=False)

    def __post_init__(self) -> None:
        self.encode = _record_encoder(self.dialect)

    async def reset(self, table: str = "chronicle_events") -> None:
        """Empty the table, and make the next contender start from a clean state."""
        if self.dialect == "postgresql":
            await self.raw.execute(f"TRUNCATE {table}")
            # Dirty pages of the last contender are flushed now, not in the next one's time.
            with contextlib.suppress(asyncpg.PostgresError):
                await self.raw.execute("CHECKPOINT")
        else:
            await self.raw.execute(f"DELETE FROM {table}")
            await self.raw.commit()
            await self.raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def count(self, table: str = "chronicle_events") -> int:
        if self.dialect == "postgresql":
            return int(await self.raw.fetchval(f"SELECT count(*) FROM {table}"))
        async with self.raw.execute(f"SELECT count(*) FROM {table}") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def copy(self, records: Sequence[Record], table: str = "chronicle_events") -> None:
        """The limit: pre-serialised rows, 1,000 per transaction."""
        if self.dialect == "postgresql":
            for batch in _chunks(records, _BATCH):
                async with self.raw.transaction():
                    await self.raw.copy_records_to_table(table, records=batch, columns=_COLUMNS)
        else:
            sql = _insert_sql()
            for batch in _chunks(records, _BATCH):
                await self.raw.executemany(sql, batch)
                await self.raw.commit()

    async def prefill(
        self, count: int, templates: Sequence[Record], timeline: _Timeline, chunk: int = 50_000
    ) -> None:
        """Bulk-load ``count`` rows with the contents of ``templates`` in turn and new,
        later ids and times, ``chunk`` rows per transaction. PostgreSQL generates them on
        the server from a temporary copy of the templates (``INSERT ... SELECT``: twice
        as fast as COPY here); SQLite takes them with ``executemany``."""
        if self.dialect == "postgresql":
            await self._prefill_postgresql(count, templates, timeline, chunk)
            return
        sql = _insert_sql()
        done = 0
        while done < count:
            size = min(chunk, count - done)
            batch = []
            for i in range(done, done + size):
                ident, when = timeline.next()
                record = list(templates[i % len(templates)])
                record[_ID_INDEX] = str(ident)
                record[_TIME_INDEX] = _sqlite_time(when)
                batch.append(tuple(record))
            await self.raw.executemany(sql, batch)
            await self.raw.commit()
            done += size

    async def _prefill_postgresql(
        self, count: int, templates: Sequence[Record], timeline: _Timeline, chunk: int
    ) -> None:
        kept = [c for c in _COLUMNS if c not in ("id", "created_at")]
        await self.raw.execute(
            "CREATE TEMP TABLE IF NOT EXISTS bench_templates "
            "(LIKE chronicle_events INCLUDING DEFAULTS, k int)"
        )
        await self.raw.execute("TRUNCATE bench_templates")
        await self.raw.copy_records_to_table(
            "bench_templates",
            records=[(*record, k) for k, record in enumerate(templates)],
            columns=(*_COLUMNS, "k"),
        )
        # A UUIDv7 from the row's time (48 bits of milliseconds) and md5 bits.
        uuid7 = (
            "(lpad(to_hex((extract(epoch FROM t.ts) * 1000)::bigint), 12, '0') || '7' || "
            "substr(md5(g.i::text), 1, 3) || '8' || substr(md5(g.i::text), 4, 15))::uuid"
        )
        sql = (
            f"INSERT INTO chronicle_events (id, created_at, {', '.join(kept)}) "
            f"SELECT {uuid7}, t.ts, {', '.join('p.' + c for c in kept)} "
            "FROM generate_series($1::bigint, $2::bigint) AS g(i) "
            "CROSS JOIN LATERAL (SELECT $3::timestamptz + g.i * interval '1 millisecond' AS ts) t "
            "JOIN bench_templates p ON p.k = g.i % $4"
        )
        first = timeline.skip(count)  # the rows' times, 1 ms apart, from ``first``
        for low in range(0, count, chunk):
            high = min(count, low + chunk) - 1
            async with self.raw.transaction():
                await self.raw.execute(sql, low, high, first, len(templates))
        await self.raw.execute("DROP TABLE bench_templates")

    # -- the contenders: each writes ``events`` and is timed by the caller ------------------

    async def write_naive(self, events: Sequence[ProxyLogEvent]) -> None:
        statement = insert(chronicle_events)
        for item in events:
            async with self.engine.begin() as conn:
                await conn.execute(statement, event_row(item))

    async def write_orm(self, events: Sequence[ProxyLogEvent]) -> None:
        for batch in _chunks(events, _BATCH):
            async with AsyncSession(self.engine) as session:
                session.add_all([_EventRecord(**event_row(item)) for item in batch])
                await session.commit()

    async def write_core(self, events: Sequence[ProxyLogEvent]) -> None:
        statement = insert(chronicle_events)
        for batch in _chunks(events, _BATCH):
            async with self.engine.begin() as conn:
                await conn.execute(statement, [event_row(item) for item in batch])

    async def write_chronicle(self, events: Sequence[ProxyLogEvent]) -> None:
        encode = self.encode
        sql_for: dict[int, str] = {}
        for batch in _chunks(events, _CHRONICLE_BATCH):
            params: list[Any] = []
            for item in batch:
                params.extend(encode(event_row(item)))
            sql = sql_for.get(len(batch)) or sql_for.setdefault(
                len(batch), _values_sql(self.dialect, len(batch))
            )
            if self.dialect == "postgresql":
                await self.raw.execute(sql, *params)  # one statement: its own transaction
            else:
                await self.raw.execute(sql, params)
                await self.raw.commit()

    def limit_records(self, events: Sequence[ProxyLogEvent]) -> list[Record]:
        """Contender 5's input, serialised before timing."""
        return [self.encode(event_row(item)) for item in events]

    async def write_eventlog(self, events: Sequence[ProxyLogEvent]) -> LoggerStats:
        sender, task = eventlog.start_database_logger(
            self.db, batch_size=_BATCH, debounce_time=_DEBOUNCE
        )
        send = sender.send
        for i, item in enumerate(events, 1):
            send(item)
            if i % _BATCH == 0:
                await asyncio.sleep(0)  # an application's loop runs other tasks too
        sender.close()
        await task
        return sender.stats()


def _asyncpg_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _plain_engine(url: URL) -> AsyncEngine:
    """What an application would create: default pool, orjson for JSON; on SQLite the
    pragmas eventlog uses too (WAL, synchronous=NORMAL), so only the method differs."""
    engine = create_async_engine(url, json_serializer=_orjson_text)
    if url.get_backend_name() == "sqlite":

        @sa_event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.close()

    return engine


async def _pg_admin(server: URL, sql: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(server), timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _postgres_database(server_url: str) -> AsyncIterator[URL]:
    """A new database on the server, dropped on the way out."""
    server = check_pg_url(server_url)
    name = f"eventlog_bench_{secrets.token_hex(6)}"
    try:
        await _pg_admin(server, f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as err:
        shown = server.render_as_string(hide_password=True)
        raise DatabaseError(
            f"could not create a bench database on {shown} "
            f"({type(err).__name__}: {err}); start PostgreSQL, give --pg-url, "
            "or run with --backends sqlite"
        ) from err
    try:
        yield server.set(drivername="postgresql+asyncpg", database=name)
    finally:
        await _pg_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def _sqlite_file(path: Path | None) -> AsyncIterator[URL]:
    """A new SQLite file (with its -wal and -shm), removed on the way out."""
    folder = None
    if path is None:
        folder = Path(tempfile.mkdtemp(prefix="eventlog_bench_"))
        path = folder / "bench.db"
    try:
        yield URL.create("sqlite+aiosqlite", database=str(path))
    finally:
        _remove_sqlite(path, folder)


def _remove_sqlite(path: Path, folder: Path | None) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if folder is not None:
        folder.rmdir()


@contextlib.asynccontextmanager
async def _open_backend(dialect: Backend, config: BenchConfig) -> AsyncIterator[_Backend]:
    place = (
        _postgres_database(config.pg_url)
        if dialect == "postgresql"
        else _sqlite_file(config.sqlite_path)
    )
    async with place as url, contextlib.AsyncExitStack() as stack:
        db = await eventlog.open_database(url, migrate=True)
        stack.push_async_callback(db.close)
        engine = _plain_engine(url)
        stack.push_async_callback(engine.dispose)
        raw: Any
        if dialect == "postgresql":
            raw = await asyncpg.connect(_asyncpg_dsn(url), timeout=10)
            stack.push_async_callback(raw.close)
            version = str(await raw.fetchval("SHOW server_version"))
            rows = await raw.fetch(
                "SELECT attname, attcompression::text AS method FROM pg_attribute "
                "WHERE attrelid = 'chronicle_events'::regclass AND attnum > 0 "
                "AND NOT attisdropped AND atttypid = 'jsonb'::regtype ORDER BY attnum"
            )
            default = await raw.fetchval("SHOW default_toast_compression")
            methods = {
                {"p": "pglz", "l": "lz4"}.get(r["method"], f"default ({default})") for r in rows
            }
            storage = "jsonb, " + "/".join(sorted(methods))
            default_storage = str(default)
            # The same table with PostgreSQL's default column storage: contender 5d.
            await raw.execute(
                "CREATE TABLE bench_default_storage (LIKE chronicle_events "
                "INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)"
            )
        else:
            raw = await aiosqlite.connect(url.database or "")
            stack.push_async_callback(raw.close)
            await raw.execute("PRAGMA journal_mode=WAL")
            await raw.execute("PRAGMA synchronous=NORMAL")
            await raw.execute("PRAGMA busy_timeout=10000")
            version = sqlite3.sqlite_version
            storage = "JSON as TEXT"
            default_storage = ""
        yield _Backend(dialect, url, db, engine, raw, version, storage, default_storage)


# -- measuring ------------------------------------------------------------------------------


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (as numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _settle() -> None:
    gc.collect()


def _say(console: Console, text: str) -> None:
    """A progress line: not wrapped, not highlighted."""
    console.print(text, highlight=False, soft_wrap=True)


class _Failures:
    """What went wrong during the run (rows missing, writes failed): printed and saved."""

    def __init__(self, console: Console) -> None:
        self.items: list[str] = []
        self._console = console

    def add(self, message: str) -> None:
        self.items.append(message)
        self._console.print(f"[red]FAILED:[/] {message}", highlight=False)


async def _run_contender(
    backend: _Backend, key: str, events: Sequence[ProxyLogEvent], failures: _Failures
) -> float:
    """Write ``events`` with contender ``key`` into an empty table; events per second."""
    table = "bench_default_storage" if key == "limit_default" else "chronicle_events"
    await backend.reset(table)
    records = backend.limit_records(events) if key in ("limit", "limit_default") else None
    _settle()
    stats = None
    started = time.perf_counter()
    if key == "naive":
        await backend.write_naive(events)
    elif key == "orm":
        await backend.write_orm(events)
    elif key == "core":
        await backend.write_core(events)
    elif key == "chronicle":
        await backend.write_chronicle(events)
    elif key in ("limit", "limit_default"):
        assert records is not None
        await backend.copy(records, table)
    elif key == "eventlog":
        stats = await backend.write_eventlog(events)
    else:  # pragma: no cover - a programming error
        raise ValueError(f"unknown contender {key!r}")
    elapsed = time.perf_counter() - started
    if stats is not None and (stats.written != len(events) or stats.failed):
        failures.add(
            f"{backend.dialect} eventlog: written {stats.written} of {len(events)} "
            f"(failed {stats.failed}); see the errors logged above"
        )
    stored = await backend.count(table)
    if stored != len(events):
        failures.add(f"{backend.dialect} {key}: {stored} rows stored, {len(events)} expected")
    return len(events) / elapsed


def _contenders(dialect: Backend) -> tuple[str, ...]:
    return tuple(k for k in CONTENDERS if k != "limit_default" or dialect == "postgresql")


async def _throughput(
    backend: _Backend,
    events: Sequence[ProxyLogEvent],
    config: BenchConfig,
    failures: _Failures,
    console: Console,
) -> dict[str, dict[str, Any]]:
    keys = _contenders(backend.dialect)
    warmup = events[: config.warmup_events]
    if warmup:  # connections opened, statements prepared, code paths warm: for everyone
        for key in keys:
            size = max(1, len(warmup) // 10) if key == "naive" else len(warmup)
            await _run_contender(backend, key, warmup[:size], failures)
    rates: dict[str, list[float]] = {key: [] for key in keys}
    sizes = {key: config.naive_events if key == "naive" else len(events) for key in keys}
    for number in range(1, config.rounds + 1):
        for key in keys:
            rate = await _run_contender(backend, key, events[: sizes[key]], failures)
            rates[key].append(rate)
        line = " · ".join(f"{key} {rates[key][-1]:,.0f}" for key in keys)
        _say(
            console,
            f"  {backend.dialect} round {number}/{config.rounds} (events/s): {line}",
        )
    result: dict[str, dict[str, Any]] = {}
    ours = statistics.median(rates["eventlog"])
    for key in keys:
        median = statistics.median(rates[key])
        result[key] = {
            "events": sizes[key],
            "rounds_events_per_s": rates[key],
            "median_events_per_s": median,
            "eventlog_ratio": ours / median,
        }
    return result


class _CommitClock:
    """Wraps a database: records when each entry's batch has committed."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.committed: dict[uuid.UUID, float] = {}

    def __getattr__(self, name: str) -> Any:  # dialect, engine ...: the real database's
        return getattr(self._db, name)

    async def write_log_batch(self, entries: Sequence[ProxyLogEntry]) -> None:
        await self._db.write_log_batch(entries)
        now = time.perf_counter()
        for entry in entries:
            assert isinstance(entry, ProxyLogEvent)
            self.committed[entry.id] = now


async def _latency(
    backend: _Backend, events: Sequence[ProxyLogEvent], rate: int
) -> dict[str, float]:
    """Send-to-commit latency at a steady ``rate``, sends paced by the loop's clock."""
    await backend.reset()
    _settle()
    clock = _CommitClock(backend.db)
    sender, task = eventlog.start_database_logger(clock, batch_size=_BATCH, debounce_time=_DEBOUNCE)
    loop = asyncio.get_running_loop()
    sent: dict[uuid.UUID, float] = {}
    start = loop.time()
    for i, item in enumerate(events):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[item.id] = time.perf_counter()
        sender.send(item)
    elapsed = loop.time() - start
    sender.close()
    await task
    latencies = [
        (clock.committed[key] - value) * 1000
        for key, value in sent.items()
        if key in clock.committed
    ]
    return {
        "events": len(events),
        "committed": len(latencies),
        "target_rate": rate,
        "actual_rate": len(events) / elapsed if elapsed > 0 else math.nan,
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
        "max_ms": max(latencies, default=math.nan),
    }


async def _ticks(stop: asyncio.Event, lags: list[float], period: float = 0.001) -> None:
    """Every ``period``: how late the loop ran this task (seconds)."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + period
        await asyncio.sleep(period)
        lags.append(loop.time() - due)


async def _loop_lag(
    backend: _Backend, events: Sequence[ProxyLogEvent], *, one_write_at_a_time: bool = False
) -> dict[str, float]:
    """The loop's lag while the writer writes ``events`` flat out (all queued at once).

    ``one_write_at_a_time`` sets ``Database.concurrent_writes`` to 1 for the measurement:
    on a machine whose cores the database server shares, two server processes writing
    at once take CPU from the application's loop, which the writer's own steps do not.
    """
    idle: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.create_task(_ticks(stop, idle))
    await asyncio.sleep(0.3)
    stop.set()
    await ticker

    await backend.reset()
    _settle()
    concurrent = backend.db.concurrent_writes
    if one_write_at_a_time:
        backend.db.concurrent_writes = 1
    try:
        sender, task = eventlog.start_database_logger(
            backend.db, batch_size=_BATCH, debounce_time=_DEBOUNCE
        )
        for item in events:
            sender.send(item)
        sender.close()
        lags: list[float] = []
        stop = asyncio.Event()
        ticker = asyncio.create_task(_ticks(stop, lags))
        started = time.perf_counter()
        await task
        elapsed = time.perf_counter() - started
    finally:
        backend.db.concurrent_writes = concurrent
    stop.set()
    await ticker
    return {
        "events": len(events),
        "writer_seconds": elapsed,
        "samples": len(lags),
        "p50_ms": _percentile(lags, 0.50) * 1000,
        "p99_ms": _percentile(lags, 0.99) * 1000,
        "max_ms": max(lags, default=math.nan) * 1000,
        "idle_p99_ms": _percentile(idle, 0.99) * 1000,
    }


async def _growth(
    backend: _Backend,
    workload: _Workload,
    pool: Sequence[ProxyLogEvent],
    rows: int,
    console: Console,
    failures: _Failures,
) -> dict[str, Any]:
    """eventlog's throughput on the first tenth of ``rows`` into an empty table, then
    again on the next tenth after bulk-loading the table up to ``rows``.

    Each segment is written as five runs of the logger (a fifth each), and its figure is
    their median: one slow second on a shared machine moves a single figure far more.
    """
    segment = max(1, rows // 10)
    parts = 5 if segment >= 5 else 1
    await backend.reset()

    async def timed_segment() -> tuple[float, list[float]]:
        if backend.dialect == "postgresql":
            with contextlib.suppress(asyncpg.PostgresError):
                await backend.raw.execute("CHECKPOINT")
        rates = []
        sizes = [segment // parts + (1 if i < segment % parts else 0) for i in range(parts)]
        for size in sizes:
            events = workload.copies(pool, size)
            _settle()
            started = time.perf_counter()
            stats = await backend.write_eventlog(events)
            rates.append(size / (time.perf_counter() - started))
            if stats.written != size:
                failures.add(f"{backend.dialect} growth: written {stats.written} of {size}")
        return statistics.median(rates), rates

    first, first_rates = await timed_segment()
    _say(console, f"  {backend.dialect} growth: rows 0-{segment:,}: eventlog {first:,.0f} events/s")
    fill = max(0, rows - segment)
    started = time.perf_counter()
    await backend.prefill(fill, backend.limit_records(pool), workload.timeline)
    prefill_seconds = time.perf_counter() - started
    before = await backend.count()
    _say(
        console,
        f"  {backend.dialect} growth: bulk-loaded {fill:,} rows in {prefill_seconds:.1f} s",
    )
    later, later_rates = await timed_segment()
    _say(
        console,
        f"  {backend.dialect} growth: rows {before:,}-{before + segment:,}: "
        f"eventlog {later:,.0f} events/s",
    )
    return {
        "segment_events": segment,
        "first_rows_from": 0,
        "first_events_per_s": first,
        "first_runs_events_per_s": first_rates,
        "later_rows_from": before,
        "later_events_per_s": later,
        "later_runs_events_per_s": later_rates,
        "ratio": later / first,
        "prefill_rows": fill,
        "prefill_seconds": prefill_seconds,
    }


# -- send() on the caller -------------------------------------------------------------------


class _NullDatabase:
    """Accepts every batch and keeps nothing: send() is measured without a database."""

    dialect = "null"

    async def write_log_batch(self, entries: Sequence[ProxyLogEntry]) -> None:
        return None


def _timer_overhead_ns(samples: int = 20_000) -> int:
    clock = time.perf_counter_ns
    pairs = []
    for _ in range(samples):
        t0 = clock()
        pairs.append(clock() - t0)
    return int(statistics.median(pairs))


def _timed_sends(
    send: Callable[[ProxyLogEvent], None], events: Sequence[ProxyLogEvent]
) -> list[int]:
    clock = time.perf_counter_ns
    samples: list[int] = []
    append = samples.append
    for item in events:
        t0 = clock()
        send(item)
        append(clock() - t0)
    return samples


async def _send_cost(events: Sequence[ProxyLogEvent], samples: int) -> dict[str, Any]:
    """The cost of ``send()`` for an already-built event, on the loop's thread and from
    four other threads at once (writer running on a null database meanwhile)."""
    loop = asyncio.get_running_loop()
    overhead = _timer_overhead_ns()
    pool = list(events[: min(len(events), 10_000)])

    def stream(count: int) -> list[ProxyLogEvent]:
        return [pool[i % len(pool)] for i in range(count)]

    # The loop's thread: 1,000 sends at a time, then the loop runs (the writer drains).
    sender, task = eventlog.start_database_logger(
        _NullDatabase(), batch_size=_BATCH, debounce_time=_DEBOUNCE
    )
    _settle()
    per_call: list[int] = []
    batch_means: list[float] = []
    clock = time.perf_counter_ns
    for chunk in _chunks(stream(samples), _BATCH):
        per_call.extend(_timed_sends(sender.send, chunk))
        t0 = clock()
        for item in chunk:
            sender.send(item)
        batch_means.append((clock() - t0) / len(chunk))
        await asyncio.sleep(0)
    sender.close()
    await task

    # Four other threads at once; count the loop's cross-thread callbacks meanwhile.
    threads_n = 4
    sender, task = eventlog.start_database_logger(
        _NullDatabase(), batch_size=_BATCH, debounce_time=_DEBOUNCE
    )
    per_thread = max(1, samples // threads_n)
    barrier = threading.Barrier(threads_n)
    results: list[list[int]] = [[] for _ in range(threads_n)]
    calls = 0
    original = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any, context: Any = None) -> asyncio.Handle:
        nonlocal calls
        calls += 1
        return original(callback, *args, context=context)

    def worker(index: int) -> None:
        mine = stream(per_thread)
        barrier.wait()
        results[index] = _timed_sends(sender.send, mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    _settle()
    setattr(loop, "call_soon_threadsafe", counting)  # noqa: B010 - mypy: a method
    try:
        for thread in threads:
            thread.start()
        # Polled rather than awaited through the loop: a thread finishing must not add a
        # cross-thread callback to the count; the loop stays free for the writer.
        while any(thread.is_alive() for thread in threads):  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    finally:
        delattr(loop, "call_soon_threadsafe")  # the class's method again
    for thread in threads:
        thread.join()
    sender.close()
    await task
    threaded = [sample for result in results for sample in result]

    def summary(values: list[int]) -> dict[str, float]:
        net = [max(0, v - overhead) / 1000 for v in values]
        return {
            "samples": len(values),
            "median_us": _percentile(net, 0.50),
            "p99_us": _percentile(net, 0.99),
            "max_us": max(net, default=math.nan),
        }

    return {
        "timer_overhead_ns": overhead,
        "loop_thread": {
            **summary(per_call),
            "batch_mean_us": statistics.median(batch_means) / 1000,
        },
        "threads": {
            **summary(threaded),
            "threads": threads_n,
            "call_soon_threadsafe_per_1000_sends": calls * 1000 / max(1, len(threaded)),
        },
    }


# -- memory per queued event: in a fresh interpreter ----------------------------------------


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak is the best the standard library offers
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _StoppedDatabase:
    """A database that does not answer: every write waits until :meth:`release`, then
    is dropped (the figure is the memory held meanwhile, not the write)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._released = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def release(self) -> None:
        self._released.set()

    async def write_log_batch(self, entries: Sequence[ProxyLogEntry]) -> None:
        await self._released.wait()


async def _memory_in_child(url: str, count: int, seed: int, mode: str) -> dict[str, float]:
    workload = _Workload(seed)
    workload.event()  # warm the generator's caches before the first reading
    if mode == "held":  # the events alone, kept in a list: no logger
        _settle()
        before = _rss_bytes()
        held = [workload.event() for _ in range(count)]
        _settle()
        after = _rss_bytes()
        del held
        return {"events": count, "bytes_per_event": (after - before) / count}
    db = await eventlog.open_database(url)  # does not connect
    stopped = _StoppedDatabase(db)
    sender, task = eventlog.start_database_logger(
        stopped, batch_size=_BATCH, debounce_time=_DEBOUNCE
    )
    await asyncio.sleep(0)
    _settle()
    before = _rss_bytes()
    for i in range(1, count + 1):
        sender.send(workload.event())  # built, sent, and forgotten by the application
        if i % _BATCH == 0:
            await asyncio.sleep(0)
    await asyncio.sleep(_DEBOUNCE * 2)  # the writer has taken its first batch and waits
    _settle()
    after = _rss_bytes()
    queued = sender.stats().queued
    stopped.release()
    sender.close()
    await task
    await db.close()
    return {"events": count, "queued": queued, "bytes_per_event": (after - before) / count}


def _memory_child() -> None:
    """Entry point of the memory measurement's child interpreter (argv: count seed mode;
    the database URL in the environment, where ``ps`` does not show a password)."""
    count, seed, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    url = os.environ[_CHILD_URL_ENV]
    result = asyncio.run(_memory_in_child(url, count, seed, mode))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


_CHILD_URL_ENV: Final = "EVENTLOG_BENCH_CHILD_URL"


async def _memory(url: URL, count: int, seed: int) -> dict[str, float]:
    """Memory per queued event, measured in fresh interpreters so that memory freed by
    the earlier phases (and kept by the allocator) cannot hide the growth."""
    figures: dict[str, float] = {}
    for mode in ("held", "queued"):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from eventlog.bench import _memory_child; _memory_child()",
            str(count),
            str(seed),
            mode,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, _CHILD_URL_ENV: url.render_as_string(hide_password=False)},
        )
        out, err = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"the memory measurement failed: {err.decode().strip()}")
        result = orjson.loads(out)
        if mode == "held":
            figures["event_object_bytes"] = result["bytes_per_event"]
        else:
            figures["bytes_per_event"] = result["bytes_per_event"]
            figures["queued"] = result["queued"]
            figures["events"] = result["events"]
    return figures


# -- the run ------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    names = ("eventlog", "sqlalchemy", "asyncpg", "aiosqlite", "orjson")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "sqlite_library": sqlite3.sqlite_version,
        "versions": _versions(),
    }


async def run_bench(config: BenchConfig, console: Console | None = None) -> dict[str, Any]:
    """Run the whole benchmark; return every figure (what ``--json`` writes).

    Progress lines go to ``console``; :func:`print_report` prints the tables.
    """
    console = console or Console()
    failures = _Failures(console)
    started_at = datetime.now(UTC)
    report: dict[str, Any] = {
        "date": started_at.isoformat(timespec="seconds"),
        "command": shlex.join(["eventlog", *sys.argv[1:]])
        if Path(sys.argv[0]).name == "eventlog"
        else shlex.join(sys.argv),
        "machine": _machine(),
        "config": {
            "backends": list(config.backends),
            "events": config.events,
            "naive_events": config.naive_events,
            "rounds": config.rounds,
            "growth_rows": config.growth_rows,
            "latency_seconds": config.latency_seconds,
            "latency_rate": config.latency_rate,
            "send_samples": config.send_samples,
            "memory_events": config.memory_events,
            "batch_size": _BATCH,
            "debounce_time": _DEBOUNCE,
            "chronicle_batch": _CHRONICLE_BATCH,
            "seed": config.seed,
        },
        "backends": {},
    }
    _say(
        console,
        f"eventlog bench: {config.events:,} events x {config.rounds} rounds per contender "
        f"(naive: {config.naive_events:,}), on {', '.join(config.backends)}.",
    )
    begin = time.perf_counter()
    workload = _Workload(config.seed)
    latency_events = max(1, round(config.latency_rate * config.latency_seconds))
    events = workload.events(config.events)
    payload = [_payload_bytes(item) for item in events[:2000]]
    report["workload"] = {
        "events": len(events),
        "payload_bytes_mean": statistics.fmean(payload),
        "request_bytes_mean": statistics.fmean(len(orjson.dumps(e.request)) for e in events[:2000]),
        "response_bytes_mean": statistics.fmean(
            len(orjson.dumps(e.response)) for e in events[:2000]
        ),
        "generate_seconds": time.perf_counter() - begin,
    }
    _say(
        console,
        f"  workload: {len(events):,} events generated in "
        f"{report['workload']['generate_seconds']:.1f} s, "
        f"{report['workload']['payload_bytes_mean']:,.0f} bytes each on average",
    )
    # The workload stays alive for the whole run: keep it out of the collector's way, so
    # collections during the timed parts scan what the contenders allocate.
    gc.collect()
    gc.freeze()
    try:
        report["send"] = await _send_cost(events, config.send_samples)
        for dialect in config.backends:
            report["backends"][dialect] = await _bench_backend(
                dialect, config, workload, events, latency_events, failures, console
            )
    finally:
        gc.unfreeze()
    report["seconds"] = time.perf_counter() - begin
    report["failures"] = failures.items
    return report


async def _bench_backend(
    dialect: Backend,
    config: BenchConfig,
    workload: _Workload,
    events: Sequence[ProxyLogEvent],
    latency_events: int,
    failures: _Failures,
    console: Console,
) -> dict[str, Any]:
    begin = time.perf_counter()
    async with _open_backend(dialect, config) as backend:
        console.print(f"{dialect} {backend.server_version} ({backend.storage}):", highlight=False)
        result: dict[str, Any] = {
            "server_version": backend.server_version,
            "json_storage": backend.storage,
            "default_storage": backend.default_storage,
        }
        result["throughput"] = await _throughput(backend, events, config, failures, console)
        steady = workload.copies(events, latency_events)
        result["latency"] = await _latency(backend, steady, config.latency_rate)
        if result["latency"]["committed"] != latency_events:
            failures.add(f"{dialect} latency: not every event was committed")
        result["loop_lag"] = await _loop_lag(backend, events)
        result["loop_lag_one_write"] = await _loop_lag(backend, events, one_write_at_a_time=True)
        result["memory"] = await _memory(backend.url, config.memory_events, config.seed)
        result["main_seconds"] = time.perf_counter() - begin
        _say(
            console,
            f"  {dialect}: latency p99 {result['latency']['p99_ms']:.1f} ms, "
            f"loop lag p99 {result['loop_lag']['p99_ms']:.2f} ms, "
            f"{result['memory']['bytes_per_event']:,.0f} bytes per queued event "
            f"({result['main_seconds']:.0f} s)",
        )
        if config.growth_rows:
            begin = time.perf_counter()
            pool = events[: min(len(events), 2000)]
            result["growth"] = await _growth(
                backend, workload, pool, config.growth_rows, console, failures
            )
            result["growth"]["seconds"] = time.perf_counter() - begin
    return result  # the database or file goes, rows and all: no need to empty it first


# -- the report -----------------------------------------------------------------------------


def _targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each of issue 3's targets with the measured value and whether it is met."""
    checks: list[dict[str, Any]] = []

    def check(figure: str, value: float, target: float, at_least: bool) -> None:
        met = value >= target if at_least else value <= target
        checks.append({"figure": figure, "value": value, "target": target, "met": met})

    send = report["send"]["loop_thread"]
    check(
        "send() median on the loop's thread (us)", send["median_us"], _SEND_MEDIAN_TARGET_US, False
    )
    check("send() p99 on the loop's thread (us)", send["p99_us"], _SEND_P99_TARGET_US, False)
    for dialect, figures in report["backends"].items():
        for key, target in _RATIO_TARGETS[dialect].items():
            if key in figures["throughput"]:
                ratio = figures["throughput"][key]["eventlog_ratio"]
                check(f"{dialect}: eventlog / {key}", ratio, target, True)
        check(
            f"{dialect}: latency p99 at {report['config']['latency_rate']}/s (ms)",
            figures["latency"]["p99_ms"],
            _LATENCY_P99_TARGET_MS,
            False,
        )
        check(
            f"{dialect}: loop lag p99 (ms)",
            figures["loop_lag"]["p99_ms"],
            _LAG_P99_TARGET_MS,
            False,
        )
        check(
            f"{dialect}: bytes per queued event",
            figures["memory"]["bytes_per_event"],
            _MEMORY_TARGET_BYTES,
            False,
        )
        if "growth" in figures:
            check(
                f"{dialect}: throughput at {figures['growth']['later_rows_from']:,} rows / empty",
                figures["growth"]["ratio"],
                _GROWTH_TARGET,
                True,
            )
    return checks


def _mark(met: bool) -> str:
    return "[green]ok[/]" if met else "[red]MISSED[/]"


def _short(rate: float) -> str:
    return f"{rate / 1000:.1f}k" if rate >= 10_000 else f"{rate:,.0f}"


def _rounds(count: int) -> str:
    return "1 round" if count == 1 else f"median of {count} rounds"


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    """Print the tables: per backend the contenders' medians and ratios, then eventlog's
    own figures, then each target with whether it is met."""
    console = console or Console()
    report["targets"] = _targets(report)
    config = report["config"]
    console.print()
    for dialect, figures in report["backends"].items():
        limit = "COPY" if dialect == "postgresql" else "executemany"
        table = Table(
            title=f"{dialect} {figures['server_version'].split()[0]}, "
            f"{figures['json_storage']}: events/s, {_rounds(config['rounds'])}",
            box=box.SIMPLE_HEAD,
            title_justify="left",
            pad_edge=False,
            collapse_padding=True,
        )
        table.add_column("contender", no_wrap=True)
        table.add_column("events", justify="right")
        table.add_column("events/s", justify="right", no_wrap=True)
        table.add_column("range", justify="right", no_wrap=True)
        table.add_column("ratio", justify="right", no_wrap=True)
        table.add_column("target", justify="right", no_wrap=True)
        targets = _RATIO_TARGETS[dialect]
        for key, row in figures["throughput"].items():
            rounds = row["rounds_events_per_s"]
            target = targets.get(key)
            table.add_row(
                _LABELS[key].format(limit=limit, default=figures.get("default_storage")),
                f"{row['events']:,}",
                f"{row['median_events_per_s']:,.0f}",
                f"{_short(min(rounds))}-{_short(max(rounds))}",
                "" if key == "eventlog" else f"{row['eventlog_ratio']:.2f} x",
                "" if target is None else f">={target:g} {_mark(row['eventlog_ratio'] >= target)}",
            )
        console.print(table)
        default = (
            "5d the same COPY into a copy of the table with PostgreSQL's default column storage; "
            if dialect == "postgresql"
            else ""
        )
        console.print(
            "  " + _LEGEND.format(limit=f"{limit}", default=default),
            highlight=False,
            style="dim",
        )
        console.print()

    send = report["send"]
    table = Table(
        title="eventlog send(), an already-built event (us)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
        pad_edge=False,
    )
    table.add_column("called from")
    for name in ("median", "p99", "max", "target"):
        table.add_column(name, justify="right", no_wrap=True)
    loop_row = send["loop_thread"]
    table.add_row(
        "the loop's thread",
        f"{loop_row['median_us']:.2f}",
        f"{loop_row['p99_us']:.2f}",
        f"{loop_row['max_us']:.1f}",
        f"<={_SEND_MEDIAN_TARGET_US:g} {_mark(loop_row['median_us'] <= _SEND_MEDIAN_TARGET_US)}"
        f" <={_SEND_P99_TARGET_US:g} {_mark(loop_row['p99_us'] <= _SEND_P99_TARGET_US)}",
    )
    threads = send["threads"]
    table.add_row(
        f"{threads['threads']} other threads at once",
        f"{threads['median_us']:.2f}",
        f"{threads['p99_us']:.2f}",
        f"{threads['max_us']:.1f}",
        "",
    )
    console.print(table)
    console.print(
        f"  Each call timed alone with perf_counter_ns, minus the timer's own "
        f"{send['timer_overhead_ns']} ns (median of empty pairs); writer on a null database. "
        f"Mean per call in loops of 1,000: {loop_row['batch_mean_us']:.2f} us. "
        f"Cross-thread wake-ups (call_soon_threadsafe) per 1,000 sends from threads: "
        f"{threads['call_soon_threadsafe_per_1000_sends']:.2f}.",
        highlight=False,
        style="dim",
    )
    console.print()

    dialects = list(report["backends"])
    table = Table(
        title="eventlog: latency, loop lag, memory, growth",
        box=box.SIMPLE_HEAD,
        title_justify="left",
        pad_edge=False,
    )
    table.add_column("figure")
    for dialect in dialects:
        table.add_column(dialect, justify="right")
    table.add_column("target", justify="right", no_wrap=True)

    def add(
        name: str,
        getter: Callable[[dict[str, Any]], float],
        shown: str,
        target: float | None = None,
        at_least: bool = False,
    ) -> None:
        values = [getter(report["backends"][d]) for d in dialects]
        mark = ""
        if target is not None:
            met = all(v >= target if at_least else v <= target for v in values)
            mark = f"{'>=' if at_least else '<='}{target:,g} {_mark(met)}"
        table.add_row(name, *(shown.format(v) for v in values), mark)

    rate = config["latency_rate"]
    add(f"send->commit p50 at {rate:,}/s (ms)", lambda f: f["latency"]["p50_ms"], "{:.1f}")
    add(
        f"send->commit p99 at {rate:,}/s (ms)",
        lambda f: f["latency"]["p99_ms"],
        "{:.1f}",
        _LATENCY_P99_TARGET_MS,
    )
    add("  max (ms)", lambda f: f["latency"]["max_ms"], "{:.1f}")
    add("loop lag p50, writer flat out (ms)", lambda f: f["loop_lag"]["p50_ms"], "{:.2f}")
    add(
        "loop lag p99, writer flat out (ms)",
        lambda f: f["loop_lag"]["p99_ms"],
        "{:.2f}",
        _LAG_P99_TARGET_MS,
    )
    add("  max (ms)", lambda f: f["loop_lag"]["max_ms"], "{:.1f}")
    add("  p99 of the idle loop (ms)", lambda f: f["loop_lag"]["idle_p99_ms"], "{:.2f}")
    add(
        "  p99 with one write at a time (ms)",
        lambda f: f["loop_lag_one_write"]["p99_ms"],
        "{:.2f}",
    )
    add(
        "  events/s with one write at a time",
        lambda f: f["loop_lag_one_write"]["events"] / f["loop_lag_one_write"]["writer_seconds"],
        "{:,.0f}",
    )
    add(
        "memory per queued event (bytes)",
        lambda f: f["memory"]["bytes_per_event"],
        "{:,.0f}",
        _MEMORY_TARGET_BYTES,
    )
    add("  the event alone, held (bytes)", lambda f: f["memory"]["event_object_bytes"], "{:,.0f}")
    add(
        "  event payload, serialised (bytes)",
        lambda f: report["workload"]["payload_bytes_mean"],
        "{:,.0f}",
    )
    if all("growth" in report["backends"][d] for d in dialects):
        add(
            "growth: events/s into an empty table",
            lambda f: f["growth"]["first_events_per_s"],
            "{:,.0f}",
        )
        add("  events/s from row N", lambda f: f["growth"]["later_events_per_s"], "{:,.0f}")
        add("  N", lambda f: f["growth"]["later_rows_from"], "{:,}")
        add("  ratio", lambda f: f["growth"]["ratio"], "{:.2f}", _GROWTH_TARGET, at_least=True)
    console.print(table)
    console.print(
        f"  Latency: {rate:,} events/s paced by the loop's clock for "
        f"{config['latency_seconds']:g} s, commit time taken when write_log_batch returns. "
        "Lag: a task sleeping 1 ms at a time, how late it wakes while the writer writes "
        f"{config['events']:,} queued events. Memory: RSS growth over "
        f"{config['memory_events']:,} events built, sent and dropped by the caller while "
        "the database does not answer, in a fresh interpreter.",
        highlight=False,
        style="dim",
    )
    console.print()

    missed = [c for c in report["targets"] if not c["met"]]
    met = len(report["targets"]) - len(missed)
    console.print(f"Targets: {met} of {len(report['targets'])} met.", highlight=False)
    for item in missed:
        console.print(
            f"  [red]missed[/]: {item['figure']}: {item['value']:,.2f} (target {item['target']:g})",
            highlight=False,
        )
    timing = [f"whole run {report['seconds']:.0f} s"]
    for dialect in dialects:
        figures = report["backends"][dialect]
        part = f"{dialect} {figures['main_seconds']:.0f} s"
        if "growth" in figures:
            part += f" + growth {figures['growth']['seconds']:.0f} s"
        timing.append(part)
    console.print("Time: " + "; ".join(timing) + ".", highlight=False)
    for failure in report["failures"]:
        console.print(f"[red]FAILED:[/] {failure}", highlight=False)


def write_json(report: dict[str, Any], path: Path) -> None:
    """Every figure (every round), the machine and the command, as JSON."""
    if "targets" not in report:
        report["targets"] = _targets(report)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
