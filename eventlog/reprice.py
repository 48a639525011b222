"""Re-pricing history after a price changed: ``eventlog reprice --since DATE``.

The writer prices each call once, when it is written, and stores the ``price_id`` used.
When a price was wrong, or a model had none, :func:`reprice` computes the cost of the
stored calls again with today's prices (the user's, then the bundled ones; see
:mod:`eventlog.prices`) from their token columns (read again from the stored response
for rows written before revision 0004, which had no cache or reasoning counts),
updates the rows whose cost or price changed, and rebuilds the rollup of the same
hours, in one transaction per day (see :func:`eventlog.rollup.rebuild`). A cost the
provider reported (``price_id`` ``"provider"``) is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Text, and_, bindparam, case, null, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from eventlog.analytics import TimeArg, parse_time
from eventlog.database import Database
from eventlog.rollup import LLM_CALL, rebuild
from eventlog.schema import chronicle_events
from eventlog.usage import PROVIDER_PRICE_ID, Tokens, priced_cost, read_tokens

__all__ = ["RepriceResult", "reprice"]

_UPDATES_PER_STATEMENT = 1000
_TOKEN_COLUMNS = {
    "prompt_tokens": "prompt",
    "completion_tokens": "completion",
    "total_tokens": "total",
    "cache_read_tokens": "cache_read",
    "cache_write_tokens": "cache_write",
    "reasoning_tokens": "reasoning",
}


@dataclass(frozen=True, slots=True)
class RepriceResult:
    """What :func:`reprice` did over ``[since, until)`` (rounded out to whole hours).

    ``calls`` LLM calls were looked at; ``changed`` got a new cost or price, of which
    ``now_priced`` had none before; ``unpriced`` still have none (no price for the
    model, or no token counts); ``provider_cost`` kept the cost the provider reported;
    ``recounted`` had their token counts read again from the stored response (rows
    written before revision 0004).
    """

    since: datetime
    until: datetime
    model: str | None
    calls: int
    changed: int
    now_priced: int
    unpriced: int
    provider_cost: int
    rollup_rows: int
    recounted: int = 0
    unpriced_models: dict[str, int] = field(default_factory=dict)


async def reprice(
    db: Database,
    *,
    since: TimeArg,
    until: TimeArg = None,
    model: str | None = None,
    now: datetime | None = None,
) -> RepriceResult:
    """Compute the cost of the LLM calls in ``[since, until)`` again with the current
    prices, and rebuild the rollup of those hours. ``since`` is required: a datetime, a
    span back from now (``30d``), or an ISO date or time (UTC unless it says)."""
    if since is None:
        raise ValueError("since must be given: a datetime, a span like 30d, or an ISO date")
    if model is not None and (not isinstance(model, str) or not model):
        raise ValueError(f"model must be a non-empty str or None, got {model!r}")
    from eventlog.prices import PriceBook, load_user_prices  # prices build on the database

    moment = datetime.now(UTC) if now is None else parse_time(now, "now", now=datetime.now(UTC))
    start = parse_time(since, "since", now=moment)
    end = parse_time(until, "until", now=moment)
    if start >= end:
        raise ValueError(
            f"since must be before until, got {start.isoformat()} >= {end.isoformat()}"
        )
    book = PriceBook.default(await load_user_prices(db))
    counts = {
        "calls": 0,
        "changed": 0,
        "now_priced": 0,
        "unpriced": 0,
        "provider": 0,
        "recounted": 0,
    }
    is_sqlite = db.dialect == "sqlite"
    unpriced_models: dict[str, int] = {}
    events = chronicle_events.c
    # SQLite cannot bind a Decimal: the NUMERIC column reads the decimal text as a number.
    cost_type: Any = Text() if db.dialect == "sqlite" else events.cost_usd.type
    statement = (
        update(chronicle_events)
        .where(events.id == bindparam("row_id"))
        .values(
            cost_usd=bindparam("new_cost", type_=cost_type),
            price_id=bindparam("new_price"),
            **{name: bindparam(f"new_{name}") for name in _TOKEN_COLUMNS},
        )
    )
    # Rows written before revision 0004 have no cache or reasoning counts, and their
    # prompt_tokens followed the provider's rule (Anthropic's without the cached
    # tokens): their tokens are read again from the stored response.
    before_0004 = and_(
        events.cache_read_tokens.is_(None),
        events.cache_write_tokens.is_(None),
        events.reasoning_tokens.is_(None),
    )

    async def reprice_chunk(
        conn: AsyncConnection, chunk_start: datetime, chunk_end: datetime
    ) -> None:
        query = select(
            events.id,
            events.provider,
            events.model,
            events.created_at,
            events.prompt_tokens,
            events.completion_tokens,
            events.total_tokens,
            events.cache_read_tokens,
            events.cache_write_tokens,
            events.reasoning_tokens,
            events.cost_usd,
            events.price_id,
            events.error.is_not(None).label("failed"),
            case((before_0004, events.chat_response), else_=null()).label("response"),
        ).where(
            events.event_type == LLM_CALL,
            events.created_at >= chunk_start,
            events.created_at < chunk_end,
        )
        if model is not None:
            query = query.where(events.model == model)
        updates: list[dict[str, Any]] = []
        for row in (await conn.execute(query)).all():
            counts["calls"] += 1
            if row.price_id == PROVIDER_PRICE_ID:
                counts["provider"] += 1
                continue
            stored = Tokens(
                row.prompt_tokens,
                row.completion_tokens,
                row.total_tokens,
                row.cache_read_tokens,
                row.cache_write_tokens,
                row.reasoning_tokens,
            )
            tokens = stored
            if row.response is not None:
                read = read_tokens(row.response)
                if read.prompt is not None or read.completion is not None:
                    tokens = read
            cost, price_id = priced_cost(
                book, row.provider, row.model, row.created_at, tokens, failed=bool(row.failed)
            )
            if cost is None:
                counts["unpriced"] += 1
                name = row.model or "(no model)"
                unpriced_models[name] = unpriced_models.get(name, 0) + 1
            old = None if row.cost_usd is None else Decimal(row.cost_usd)
            if (cost, price_id) != (old, row.price_id) or tokens != stored:
                if (cost, price_id) != (old, row.price_id):
                    counts["changed"] += 1
                    if old is None and cost is not None:
                        counts["now_priced"] += 1
                if tokens != stored:
                    counts["recounted"] += 1
                updates.append(
                    {
                        "row_id": row.id,
                        "new_cost": str(cost) if cost is not None and is_sqlite else cost,
                        "new_price": price_id,
                        **{
                            f"new_{name}": getattr(tokens, field)
                            for name, field in _TOKEN_COLUMNS.items()
                        },
                    }
                )
        for i in range(0, len(updates), _UPDATES_PER_STATEMENT):
            await conn.execute(statement, updates[i : i + _UPDATES_PER_STATEMENT])

    rebuilt = await rebuild(db, since=start, until=end, model=model, before_chunk=reprice_chunk)
    return RepriceResult(
        since=rebuilt.since or start,
        until=rebuilt.until or end,
        model=model,
        calls=counts["calls"],
        changed=counts["changed"],
        now_priced=counts["now_priced"],
        unpriced=counts["unpriced"],
        provider_cost=counts["provider"],
        rollup_rows=rebuilt.rows,
        recounted=counts["recounted"],
        unpriced_models=dict(sorted(unpriced_models.items(), key=lambda kv: (-kv[1], kv[0]))),
    )
