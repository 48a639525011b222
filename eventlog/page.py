"""The dashboard of ``eventlog serve``: ``GET /`` and ``GET /runs/{run_id}``.

Server-rendered HTML: charts are inline SVG (drawn by :mod:`eventlog.charts`), the CSS
is inline, and there is no script, web font or image, so the page makes no request to
any other host and works offline. A Content-Security-Policy header says so to the
browser too (``default-src 'none'``), which also stops any markup that slipped through
from running. Every value read from the database is escaped (:func:`html.escape`).

``GET /`` shows the LLM calls of a window (requests, errors, cost and latency
percentiles per bucket, one series per group), the top models, users, applications and
errors, and the runs started in the window. ``GET /runs/{run_id}`` shows one run's
steps as a timeline. The state lives in the query string, so every view is a link::

    since   window start: 1h, 24h, 7d, 30d, 90d (any N with m/h/d/w) or an ISO time (24h)
    until   window end, the same forms (now)
    by      the charts' series: model, provider, application, environment, organization,
            project, user, workflow, or none (model); repeat or comma-separate for several
    bucket  auto, minute, hour, day, week or month (auto: from the window's length)
    tz      IANA time zone for the times shown, local day/week/month buckets and ISO
            times without an offset (UTC)
    where   KEY=VALUE, repeatable: only calls with a group, column or meta.KEY value
    format  html or csv; csv takes table=series|models|users|applications|errors|runs
            (on a run's page: table=steps) and answers one table as a CSV download

A bad parameter is a 400 page that names it; an unknown run a 404; a database that
cannot be read a 503. With a token, the pages accept the ``Authorization: Bearer``
header, or ``?token=`` once, which answers with an HttpOnly, SameSite=Strict cookie
(an HMAC of the token, not the token) and moves on to the same URL without the token:
see :func:`sign_in`; :class:`eventlog.server._Guard` calls it.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import html
import io
import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from eventlog import analytics
from eventlog.analytics import (
    LatencyRow,
    LatencyStats,
    RunDetail,
    RunRow,
    StepRow,
    UsageRow,
    usd_text,
)
from eventlog.charts import OTHER_COLOR, PALETTE, Series, TimelineRow, chart, time_axis, timeline
from eventlog.database import Database
from eventlog.exceptions import DatabaseError

__all__ = [
    "COOKIE",
    "TABLES",
    "is_page",
    "metrics_route",
    "page_routes",
    "session_cookie_value",
    "sign_in",
]

COOKIE: Final = "eventlog_session"
"""The cookie that carries the dashboard's session (an HMAC of the server's token)."""

TABLES: Final = ("series", "models", "users", "applications", "errors", "runs")
"""What ``table=`` takes on ``/`` with ``format=csv``."""

_BUCKETS: Final = ("auto", "minute", "hour", "day", "week", "month")
_GROUP_TITLES: Final = {
    "model": "Model",
    "provider": "Provider",
    "application": "Application",
    "environment": "Environment",
    "organization": "Organization",
    "project": "Project",
    "user": "User",
    "workflow": "Workflow",
}
_PRESETS: Final = ("1h", "24h", "7d", "30d", "90d")
_TOP_ROWS: Final = 10  # rows of a "top" table on the page; its CSV has them all
_RUN_ROWS: Final = 20
_CSV_RUN_ROWS: Final = 10_000
_MAX_SERIES: Final = 8  # the rest of the groups are summed into "other"
_MAX_LINES: Final = 5  # latency lines (percentiles do not add up into "other")
_MAX_POINTS: Final = 1500  # buckets a chart draws
_NOMINAL_SECONDS: Final = {
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "week": 7 * 86400,
    "month": 30 * 86400,
}
_PARAMETERS: Final = re.compile(r"^(since|until|tz|by|bucket|where|limit|run_id)\b")
_CSV_FORMULA: Final = ("=", "+", "-", "@", "\t", "\r")
_SESSION_MESSAGE: Final = b"eventlog dashboard session v1"
_SESSION_MAX_AGE: Final = 30 * 86400
_DASH: Final = "\N{EN DASH}"  # an empty cell
_NONE: Final = '<span class="none">(none)</span>'  # a NULL from the database
_SECURITY_HEADERS: Final = {
    # Nothing but the page itself and its inline CSS: no script, no other host.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _e(value: object) -> str:
    """``value`` as HTML text (attributes included)."""
    return html.escape(str(value), quote=True)


# -- routes ------------------------------------------------------------------------------


def page_routes(
    database: Callable[[], object | None], *, clock: Callable[[], datetime] | None = None
) -> list[Route]:
    """The dashboard's routes. ``database()`` gives the open database while the app runs
    (None before its startup); ``clock()`` the current time (UTC), for tests."""
    pages = _Pages(database, clock or (lambda: datetime.now(UTC)))
    return [
        Route("/", pages.dashboard, methods=["GET"]),
        Route("/runs/{run_id}", pages.run, methods=["GET"]),
    ]


def is_page(scope: Scope, path: str) -> bool:
    """Whether the request is for one of the dashboard's pages."""
    return scope.get("method") in ("GET", "HEAD") and (path == "/" or path.startswith("/runs/"))


def metrics_route(path: str) -> str | None:
    """The route a dashboard path is counted under in the HTTP metrics (bounded)."""
    if path == "/":
        return "/"
    if path.startswith("/runs/"):
        return "/runs/{run_id}"
    return None


class _Problem(Exception):
    """A page that cannot be shown: ``status``, the ``parameter`` at fault (400)."""

    def __init__(self, status: int, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.parameter = parameter


def _bad_value(err: ValueError) -> _Problem:
    """An analytics ValueError as a 400 naming its parameter (its message starts with it)."""
    message = str(err)
    found = _PARAMETERS.match(message)
    return _Problem(400, message, found[1] if found else None)


class _Pages:
    def __init__(self, database: Callable[[], object | None], clock: Callable[[], datetime]):
        self._database = database
        self._clock = clock

    def _db(self) -> Database:
        db = self._database()
        if db is None:
            raise _Problem(503, "the collector is not running (its lifespan has not started)")
        if not isinstance(db, Database):
            raise _Problem(
                503,
                f"the dashboard reads a SQL database; this collector writes to a "
                f"{type(db).__name__}",
            )
        return db

    async def dashboard(self, request: Request) -> Response:
        root = request.scope.get("root_path", "")
        params = request.query_params
        view: _View | None = None
        try:
            output = _one(params, "format", "html")
            if output not in ("html", "csv"):
                raise _Problem(400, f"format must be html or csv, got {output!r}", "format")
            table = _one(params, "table", "")
            if output == "csv" and table not in TABLES:
                raise _Problem(
                    400,
                    f"table must be one of {', '.join(TABLES)} with format=csv, got {table!r}",
                    "table",
                )
            view = _view(params, self._clock())
            db = self._db()
            if output == "csv":
                header, rows = await _csv_table(db, view, table)
                return _csv_response(header, rows, _csv_name(table, view))
            return _html(_dashboard_page(root, view, await _load(db, view), db))
        except _Problem as problem:
            return _problem_page(problem, root, params, view)
        except ValueError as err:
            return _problem_page(_bad_value(err), root, params, view)
        except DatabaseError as err:
            return _problem_page(_Problem(503, str(err)), root, params, view)

    async def run(self, request: Request) -> Response:
        root = request.scope.get("root_path", "")
        params = request.query_params
        raw_id = request.path_params["run_id"]
        try:
            output = _one(params, "format", "html")
            if output not in ("html", "csv"):
                raise _Problem(400, f"format must be html or csv, got {output!r}", "format")
            zone, _ = _zone(_one(params, "tz", ""))
            try:
                run_id = uuid.UUID(raw_id)
            except ValueError:
                raise _Problem(400, f"run_id must be a UUID, got {raw_id!r}", "run_id") from None
            db = self._db()
            detail = await analytics.get_run(db, run_id)
            if detail is None:
                raise _Problem(404, f"no run {run_id} in this database")
            if output == "csv":
                table = _one(params, "table", "")
                if table != "steps":
                    raise _Problem(
                        400, f"table must be steps with format=csv, got {table!r}", "table"
                    )
                header, rows = _steps_csv(detail)
                return _csv_response(header, rows, f"eventlog-run-{run_id}-steps.csv")
        except _Problem as problem:
            return _problem_page(problem, root, params, None)
        except ValueError as err:
            return _problem_page(_bad_value(err), root, params, None)
        except DatabaseError as err:
            return _problem_page(_Problem(503, str(err)), root, params, None)
        return _html(_run_page(root, params, zone, detail))


def _html(body: str, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        body,
        status_code=status,
        media_type="text/html; charset=utf-8",
        headers={**_SECURITY_HEADERS, **(headers or {})},
    )


# -- the token: header, or ?token= once and a cookie -------------------------------------


def session_cookie_value(token: bytes) -> str:
    """The cookie's value for ``token``: an HMAC of it, so the cookie is not the token
    (it opens the pages only, never the API) and a new token ends old sessions."""
    return hmac.new(token, _SESSION_MESSAGE, hashlib.sha256).hexdigest()


def _cookie(scope: Scope, name: str) -> str | None:
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
    for key, value in headers:
        if key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                cookie_name, sep, cookie_value = part.strip().partition("=")
                if sep and cookie_name == name:
                    return cookie_value
    return None


def sign_in(scope: Scope, token: bytes, *, header_ok: bool) -> Response | None:
    """For a page request to a server with ``token``: None to let it through (a right
    ``Authorization`` header, or the session cookie), else the answer.

    ``?token=`` right: a 200 page that sets the cookie (HttpOnly, SameSite=Strict, for
    30 days) and moves on to the same URL without the token. A redirect would not do:
    SameSite=Strict cookies are left out of a redirect that a link from another site
    started, and a page's own refresh is a same-site navigation. Wrong or missing: 401.
    """
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    given = [value for key, value in query if key == "token"]
    root = scope.get("root_path", "")
    if given:
        if not hmac.compare_digest(given[-1].encode(), token):
            return _denied(root, "The token in the link is not this server's token.")
        rest = [(key, value) for key, value in query if key != "token"]
        target = f"{root}{scope['path']}" + (f"?{urlencode(rest)}" if rest else "")
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        cookie = (
            f"{COOKIE}={session_cookie_value(token)}; Path={root or '/'}; "
            f"Max-Age={_SESSION_MAX_AGE}; HttpOnly; SameSite=Strict{secure}"
        )
        body = _document(
            "eventlog: signed in",
            f'<main><div class="panel empty"><h1>Signed in</h1>'
            f'<p><a href="{_e(target)}">Continue to the dashboard</a></p></div></main>',
            head=f'<meta http-equiv="refresh" content="0; url={_e(target)}">',
        )
        return _html(body, headers={"Set-Cookie": cookie})
    if header_ok:
        return None
    cookie_value = _cookie(scope, COOKIE)
    if cookie_value is not None and hmac.compare_digest(
        cookie_value.encode(), session_cookie_value(token).encode()
    ):
        return None
    return _denied(root, "This server asks for a token.")


def _denied(root: str, why: str) -> Response:
    body = _document(
        "eventlog: token required",
        f'<main><div class="panel empty"><h1>Token required</h1><p>{_e(why)}</p>'
        f"<p>Open <code>{_e(root)}/?token=YOUR_TOKEN</code> once (the browser keeps a "
        "session cookie for 30 days), or send <code>Authorization: Bearer YOUR_TOKEN</code>."
        "</p></div></main>",
    )
    return _html(body, 401, {"WWW-Authenticate": "Bearer"})


# -- the query string --------------------------------------------------------------------


def _one(params: Any, name: str, default: str) -> str:
    """The last value of ``name`` (a form may repeat it), stripped; ``default`` if blank.
    ``params``: Starlette's QueryParams, or anything with its ``getlist``."""
    values: list[str] = params.getlist(name)
    value = values[-1].strip() if values else ""
    return value or default


def _zone(text: str) -> tuple[tzinfo, str]:
    if not text or text.upper() == "UTC":
        return UTC, "UTC"
    try:
        return ZoneInfo(text), text
    except (ZoneInfoNotFoundError, ValueError):
        raise _Problem(
            400, f"tz must be an IANA time zone name like Europe/Berlin, got {text!r}", "tz"
        ) from None


@dataclass(frozen=True, slots=True)
class _View:
    """The checked query string of ``/``, and the raw text, for links and the form."""

    state: tuple[tuple[str, str], ...]
    since_text: str
    until_text: str
    by: tuple[str, ...]
    bucket_choice: str
    tz_text: str
    where_text: tuple[str, ...]
    where: Mapping[str, str | list[str]]
    zone: tzinfo
    zone_name: str
    now: datetime
    since: datetime
    until: datetime
    bucket: analytics.Bucket


def _view(params: Any, now: datetime) -> _View:
    since_text = _one(params, "since", "24h")
    until_text = _one(params, "until", "")
    tz_text = _one(params, "tz", "")
    zone, zone_name = _zone(tz_text)
    since = analytics.parse_time(since_text, "since", now=now, tz=zone)
    until = analytics.parse_time(until_text or None, "until", now=now, tz=zone)
    if since >= until:
        raise _Problem(
            400,
            f"since must be before until, got {since.isoformat()} >= {until.isoformat()}",
            "since",
        )
    by_values = params.getlist("by")
    names = [name.strip() for value in by_values for name in value.split(",") if name.strip()]
    if not by_values:
        names = ["model"]
    by = tuple(name for name in names if name != "none")
    bucket_choice = _one(params, "bucket", "auto")
    if bucket_choice not in _BUCKETS:
        raise _Problem(
            400, f"bucket must be one of {', '.join(_BUCKETS)}, got {bucket_choice!r}", "bucket"
        )
    bucket: analytics.Bucket
    if bucket_choice == "auto":
        bucket = analytics.auto_bucket(since, until)
    else:
        bucket = bucket_choice  # type: ignore[assignment]
        points = (until - since) / timedelta(seconds=_NOMINAL_SECONDS[bucket])
        if points > _MAX_POINTS:
            raise _Problem(
                400,
                f"bucket {bucket!r} cuts this window into about {math.ceil(points):,} buckets; "
                f"the charts draw at most {_MAX_POINTS:,}: choose a larger bucket or a "
                "shorter window",
                "bucket",
            )
    where: dict[str, str | list[str]] = {}
    where_text: list[str] = []
    for pair in params.getlist("where"):
        if not pair.strip():
            continue  # the form's empty filter field
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise _Problem(400, f"where must be KEY=VALUE, got {pair!r}", "where")
        key = key.strip()
        where_text.append(f"{key}={value}")
        before = where.get(key)
        if before is None:
            where[key] = value
        else:
            where[key] = [*([before] if isinstance(before, str) else before), value]
    state: list[tuple[str, str]] = []
    for name in ("since", "until", "by", "bucket", "tz", "where"):
        for value in params.getlist(name):
            if value.strip():
                state.append((name, value))
    return _View(
        state=tuple(state),
        since_text=since_text,
        until_text=until_text,
        by=by,
        bucket_choice=bucket_choice,
        tz_text=tz_text,
        where_text=tuple(where_text),
        where=where,
        zone=zone,
        zone_name=zone_name,
        now=now,
        since=since,
        until=until,
        bucket=bucket,
    )


def _href(root: str, path: str, state: Iterable[tuple[str, str]], **changes: str | None) -> str:
    """A link to ``path`` with the view's state, some parameters changed or removed."""
    pairs = [(k, v) for k, v in state if k not in changes]
    pairs += [(k, v) for k, v in changes.items() if v is not None]
    return f"{root}{path}" + (f"?{urlencode(pairs)}" if pairs else "")


# -- reading ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Stats:
    usage: list[UsageRow]
    latency: list[LatencyRow]

    def ranked(self) -> list[tuple[UsageRow, LatencyRow]]:
        """Rows with calls, the most requested first (then by name, code point order)."""
        pairs = [(u, lat) for u, lat in zip(self.usage, self.latency, strict=True) if u.requests]
        return sorted(pairs, key=lambda p: (-p[0].requests, _label_key(p[0].group)))


@dataclass(frozen=True, slots=True)
class _Data:
    series: _Stats
    total: _Stats
    tables: Mapping[str, _Stats]
    errors: list[analytics.ErrorCount]
    runs: list[RunRow]
    run_counts: list[analytics.RunStatusCount]


_GROUP_TABLES: Final = {"models": "model", "users": "user", "applications": "application"}


async def _stats(db: Database, view: _View, by: Sequence[str], bucketed: bool) -> _Stats:
    options: dict[str, Any] = {
        "since": view.since,
        "until": view.until,
        "by": by,
        "bucket": view.bucket if bucketed else None,
        "tz": view.zone,
        "where": view.where,
        "now": view.now,
    }
    usage = await analytics.usage(db, **options)
    # Paired by bucket and group: a call committed between the two reads may add a
    # group to the second only.
    latency = analytics.latency_for(usage, await analytics.latency(db, **options))
    return _Stats(usage, latency)


def _window(view: _View) -> dict[str, Any]:
    return {"since": view.since, "until": view.until, "tz": view.zone, "now": view.now}


async def _load(db: Database, view: _View) -> _Data:
    series = await _stats(db, view, view.by, True)
    total = await _stats(db, view, (), False)
    tables = {name: await _stats(db, view, (by,), False) for name, by in _GROUP_TABLES.items()}
    errors = await analytics.top_errors(db, where=view.where, limit=_TOP_ROWS, **_window(view))
    runs = await analytics.list_runs(db, limit=_RUN_ROWS, **_window(view))
    counts = await analytics.run_status_counts(db, **_window(view))
    return _Data(series, total, tables, errors, runs, counts)


# -- CSV ----------------------------------------------------------------------------------


def _csv_cell(value: Any) -> Any:
    """A cell as text; text that a spreadsheet would run as a formula gets a leading
    apostrophe (OWASP's advice), since model and user names come from outside."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return analytics.iso_utc(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str) and value.startswith(_CSV_FORMULA):
        return "'" + value
    return value


def _stats_rows(
    stats: _Stats, pairs: Sequence[tuple[UsageRow, LatencyRow]] | None = None
) -> list[dict[str, Any]]:
    usage = stats.usage if pairs is None else [u for u, _ in pairs]
    latency = stats.latency if pairs is None else [lat for _, lat in pairs]
    return [analytics.flat_record(r) for r in analytics.stats_records(usage, latency)]


async def _csv_table(
    db: Database, view: _View, table: str
) -> tuple[list[str], list[Sequence[Any]]]:
    if table in ("series", *_GROUP_TABLES):
        if table == "series":
            records = _stats_rows(await _stats(db, view, view.by, True))
        else:
            stats = await _stats(db, view, (_GROUP_TABLES[table],), False)
            records = _stats_rows(stats, stats.ranked())
        header = list(records[0]) if records else ["start", "end", *view.by]
        return header, [[record.get(key) for key in header] for record in records]
    if table == "errors":
        found = await analytics.top_errors(db, where=view.where, limit=10_000, **_window(view))
        return ["type", "message", "count", "last_seen"], [
            [r.type, r.message, r.count, r.last_seen] for r in found
        ]
    runs = await analytics.list_runs(db, limit=_CSV_RUN_ROWS, **_window(view))
    header = [
        "id",
        "workflow",
        "status",
        "application",
        "environment",
        "created_at",
        "updated_at",
        "duration_ms",
        "steps",
        "failed_steps",
    ]
    return header, [
        [
            r.id,
            r.workflow,
            r.status,
            r.application,
            r.environment,
            r.created_at,
            r.updated_at,
            r.duration_ms,
            r.steps,
            r.failed_steps,
        ]
        for r in runs
    ]


def _steps_csv(detail: RunDetail) -> tuple[list[str], list[Sequence[Any]]]:
    header = [
        "id",
        "parent_step",
        "type",
        "name",
        "status",
        "start_time",
        "end_time",
        "offset_ms",
        "duration_ms",
    ]
    return header, [
        [
            s.id,
            s.parent_step,
            s.type,
            s.name,
            s.status,
            s.start_time,
            s.end_time,
            s.offset_ms,
            s.duration_ms,
        ]
        for s in detail.steps
    ]


def _csv_name(table: str, view: _View) -> str:
    def stamp(at: datetime) -> str:
        return f"{at.astimezone(UTC):%Y%m%dT%H%MZ}"

    return f"eventlog-{table}-{stamp(view.since)}-{stamp(view.until)}.csv"


def _csv_response(header: Sequence[str], rows: Iterable[Sequence[Any]], filename: str) -> Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_csv_cell(value) for value in row])
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )


# -- formatting ---------------------------------------------------------------------------


def _count(n: int) -> str:
    return f"{n:,}"


def _compact(value: float) -> str:
    """A number in a few characters: 950, 1.2k, 3.4M."""
    magnitude = abs(value)
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if magnitude >= limit:
            text = f"{value / limit:.1f}".rstrip("0").rstrip(".")
            return f"{text}{suffix}"
    if value == int(value):
        return f"{int(value)}"
    return f"{value:.2g}" if magnitude < 1 else f"{value:.1f}"


def _percent(value: float | None) -> str:
    return _DASH if value is None else f"{value * 100:.1f}%"


def _duration(ms: float | None) -> str:
    if ms is None:
        return _DASH
    if ms < 1000:
        return f"{ms:,.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s".replace(".00 s", " s")
    minutes, rest = divmod(ms, 60_000)
    return f"{minutes:.0f} min {rest / 1000:.0f} s"


def _ms_tick(ms: float) -> str:
    if ms < 1000:
        return f"{ms:,.0f} ms"
    return f"{ms / 1000:g} s"


def _money(value: Decimal | float) -> str:
    amount = Decimal(str(value)) if isinstance(value, float) else value
    return f"${usd_text(amount)}"


def _money_tick(value: float) -> str:
    if value >= 1000:
        return f"${_compact(value)}"
    if value >= 1 or value == 0:
        return f"${value:,.2f}".replace(".00", "")
    return f"${value:.3g}"


def _cost(row: UsageRow) -> Decimal | None:
    """The cost of the row's priced calls; None when none has a price (never $0)."""
    return row.cost_usd if row.priced_requests else None


def _unpriced(row: UsageRow) -> tuple[int, int]:
    return row.unpriced_requests, row.unpriced_tokens


def _label(group: Mapping[str, str | None]) -> str:
    if not group:
        return "all calls"
    return " · ".join("(none)" if v is None else v for v in group.values())


def _label_key(group: Mapping[str, str | None]) -> tuple[tuple[bool, str], ...]:
    return tuple((v is not None, v or "") for v in group.values())


def _text(value: str | None) -> str:
    return _NONE if value is None else _e(value)


def _offset(ms: int | None) -> str:
    return _DASH if ms is None else "+" + _e(_duration(ms))


def _count_cell(n: int, *, bad: bool = False) -> str:
    return f'<td class="num{" bad" if bad and n else ""}">{_e(_count(n))}</td>'


def _name_cell(value: str | None, limit: int = 60) -> str:
    if value is None:
        return '<td class="name"><span class="none">(none)</span></td>'
    shown = value if len(value) <= limit else value[: limit - 1] + "…"
    return f'<td class="name" title="{_e(value)}">{_e(shown)}</td>'


def _latency_cell(value: int | None, approximate: bool) -> str:
    if value is None:
        return f'<td class="num"><span class="none">{_DASH}</span></td>'
    return f'<td class="num">{"≈" if approximate else ""}{_e(_duration(value))}</td>'


def _approximate(stats: LatencyStats) -> bool:
    return stats.approximate


def _local(at: datetime, zone: tzinfo) -> datetime:
    return at.astimezone(zone)


def _when(at: datetime, zone: tzinfo, seconds: bool = False) -> str:
    return f"{_local(at, zone):%Y-%m-%d %H:%M{':%S' if seconds else ''}}"


# -- the dashboard ------------------------------------------------------------------------

_CSS: Final = """
:root{--bg:#f4f6f9;--panel:#fff;--ink:#1c2733;--muted:#677788;--line:#e2e7ee;
--accent:#2463c9;--bad:#c8372d;--good:#1f7a3d}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
header.top{background:#17212c;color:#fff;padding:11px 28px;display:flex;align-items:baseline;
gap:14px;flex-wrap:wrap}
header.top .brand{color:#fff;font-weight:650;font-size:17px;letter-spacing:.01em}
header.top .window{color:#b4c0cc;font-size:13px}
header.top .db{margin-left:auto;color:#8c9aa8;font-size:12px}
main{max-width:1320px;margin:0 auto;padding:20px 28px 36px}
h1{font-size:20px;margin:0 0 4px}
form.filters{display:flex;flex-wrap:wrap;gap:10px 14px;align-items:flex-end;
background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:12px 14px}
form.filters label{display:flex;flex-direction:column;font-size:12px;color:var(--muted);gap:3px}
input,select{font:inherit;font-size:13px;padding:5px 8px;border:1px solid #cbd3dc;
border-radius:5px;background:#fff;color:var(--ink)}
input.when{width:14.5em}input.tz{width:10.5em}input.where{width:12em}
button{font:inherit;font-size:13px;padding:6px 18px;border-radius:5px;
border:1px solid var(--accent);background:var(--accent);color:#fff;cursor:pointer}
form.filters .reset{font-size:13px;padding-bottom:6px}
.presets{margin:8px 2px 18px;font-size:13px;color:var(--muted)}
.presets a{margin-left:10px}.presets a.on{color:var(--ink);font-weight:650}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(145px,1fr));gap:12px;
margin-bottom:16px}
.card{background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:11px 14px}
.card .label{font-size:11.5px;color:var(--muted);text-transform:uppercase;letter-spacing:.05em}
.card .value{font-size:23px;font-weight:650;margin-top:2px;font-variant-numeric:tabular-nums}
dl.facts{display:flex;flex-wrap:wrap;gap:6px 36px;margin:10px 0 2px}
dl.facts dt{font-size:11.5px;color:var(--muted);text-transform:uppercase;letter-spacing:.05em}
dl.facts dd{margin:1px 0 0;font-weight:600;font-variant-numeric:tabular-nums}
h1 .badge{vertical-align:middle;margin-left:6px}
.card .note{font-size:12px;color:var(--muted)}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(540px,1fr));gap:16px}
.panel{background:var(--panel);border:1px solid var(--line);border-radius:8px;
padding:14px 16px;margin:0 0 16px;min-width:0}
.panel-head{display:flex;align-items:baseline;gap:10px;margin-bottom:8px;flex-wrap:wrap}
.panel-head h2{font-size:15px;margin:0}
.hint{color:var(--muted);font-size:12px}
.panel-head .csv{margin-left:auto;font-size:12px;border:1px solid var(--line);
border-radius:4px;padding:1px 7px}
.scroll{overflow-x:auto}
table{width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:6px 8px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th{font-size:12px;color:var(--muted);font-weight:600;background:#fafbfc}
th.num,td.num{text-align:right}
td.name{max-width:340px;overflow:hidden;text-overflow:ellipsis}
td.message{white-space:normal;max-width:560px;overflow-wrap:anywhere}
tbody tr:hover{background:#f7f9fc}
tbody tr:last-child td{border-bottom:none}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.none{color:var(--muted);font-style:italic}
.bad{color:var(--bad)}
.badge{display:inline-block;padding:0 8px;border-radius:10px;font-size:12px;line-height:19px;
background:#e9eef6;color:#35506f}
.badge.error{background:#fde9e7;color:#b42318}
.badge.finished{background:#e4f3e8;color:#1e6b34}
.badge.started{background:#fff3dc;color:#8a5a00}
.notice{background:#fff8e5;border:1px solid #f0d68e;border-radius:8px;padding:9px 14px;
margin:0 0 16px;font-size:13px}
.problem{background:#fdeceb;border:1px solid #f1b7b1;border-radius:8px;padding:12px 16px;
margin:0 0 16px}
.problem h1{font-size:17px;color:#9b1c13}
.empty{text-align:center;padding:36px 20px}
.empty h2{font-size:18px;margin:0 0 6px}
.empty p{color:var(--muted);margin:4px 0}
.more{color:var(--muted);font-size:12px;margin:8px 0 0}
svg.chart,svg.timeline{width:100%;height:auto;display:block}
svg text{font-size:11px;fill:#677788}
svg .grid{stroke:#edf0f4}svg .axis{stroke:#b9c2cc}svg .tick{stroke:#b9c2cc}
svg .line{fill:none;stroke-width:1.8;stroke-linejoin:round;stroke-linecap:round}
svg .hit{fill:#17212c;fill-opacity:0}svg .hit:hover{fill-opacity:.05}
svg .nodata{font-size:13px;fill:#8896a5}
svg text.label{fill:#1c2733;font-size:12px}
svg text.dur{font-size:11px;fill:#46586a}
svg text.inbar{fill:#fff}
footer{color:var(--muted);font-size:12px;margin-top:8px}
"""


def _document(title: str, body: str, head: str = "") -> str:
    # The icon is empty data: the browser asks no /favicon.ico.
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{_e(title)}</title><link rel="icon" href="data:,">{head}'
        f"<style>{_CSS}</style></head><body>{body}</body></html>"
    )


def _header(root: str, state: Iterable[tuple[str, str]], window: str, db: Database | None) -> str:
    where = f'<span class="db">{_e(db.dialect)} · {_e(db.url)}</span>' if db is not None else ""
    return (
        f'<header class="top"><a class="brand" href="{_e(_href(root, "/", state))}">eventlog</a>'
        f'<span class="window">{window}</span>{where}</header>'
    )


def _window_text(view: _View) -> str:
    return (
        f"{_e(_when(view.since, view.zone))} → {_e(_when(view.until, view.zone))} "
        f"({_e(view.zone_name)})"
    )


def _form(root: str, params: Any, view: _View | None) -> str:
    """The filter form, filled from the view, or from the raw query when it was bad."""

    def raw(name: str) -> str:
        return _one(params, name, "")

    since = view.since_text if view else raw("since") or "24h"
    until = view.until_text if view else raw("until")
    tz = view.tz_text if view else raw("tz")
    bucket = view.bucket_choice if view else raw("bucket") or "auto"
    if view is not None:
        by = ",".join(view.by) or "none"
        wheres = list(view.where_text)
    else:
        by = ",".join(params.getlist("by")) or "model"
        wheres = [w for w in params.getlist("where") if w.strip()]
    by_options = [*analytics.GROUPS, "none"]
    if by not in by_options:
        by_options.append(by)
    options = "".join(
        f'<option value="{_e(name)}"{" selected" if name == by else ""}>{_e(name)}</option>'
        for name in by_options
    )
    bucket_options = "".join(
        f'<option value="{_e(name)}"{" selected" if name == bucket else ""}>{_e(name)}</option>'
        for name in (*_BUCKETS, *([bucket] if bucket not in _BUCKETS else []))
    )
    where_inputs = "".join(
        f'<input class="where" name="where" value="{_e(w)}" placeholder="user_id=alice">'
        for w in [*wheres, ""]
    )
    return (
        f'<form class="filters" method="get" action="{_e(root)}/">'
        f'<label>From<input class="when" name="since" value="{_e(since)}" '
        'placeholder="24h, 7d or 2026-03-29T00:00"></label>'
        f'<label>To<input class="when" name="until" value="{_e(until)}" placeholder="now"></label>'
        f'<label>Series by<select name="by">{options}</select></label>'
        f'<label>Bucket<select name="bucket">{bucket_options}</select></label>'
        f'<label>Time zone<input class="tz" name="tz" value="{_e(tz)}" placeholder="UTC"></label>'
        f"<label>Filter (KEY=VALUE)<span>{where_inputs}</span></label>"
        f'<button type="submit">Apply</button><a class="reset" href="{_e(root)}/">Reset</a></form>'
    )


def _presets(root: str, view: _View) -> str:
    links = "".join(
        f'<a class="{"on" if view.since_text == p and not view.until_text else ""}" '
        f'href="{_e(_href(root, "/", view.state, since=p, until=None))}">{p}</a>'
        for p in _PRESETS
    )
    return f'<nav class="presets">Last{links}</nav>'


def _panel(
    title: str, body: str, *, hint: str = "", csv_href: str | None = None, ident: str = ""
) -> str:
    csv_link = f'<a class="csv" href="{_e(csv_href)}">CSV</a>' if csv_href else ""
    hint_html = f'<span class="hint">{hint}</span>' if hint else ""
    ident_attr = f' id="{ident}"' if ident else ""
    return (
        f'<section class="panel"{ident_attr}><div class="panel-head"><h2>{_e(title)}</h2>'
        f"{hint_html}{csv_link}</div>{body}</section>"
    )


def _table(headers: Sequence[tuple[str, bool]], rows: Sequence[str]) -> str:
    head = "".join(
        f'<th class="num">{_e(h)}</th>' if num else f"<th>{_e(h)}</th>" for h, num in headers
    )
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _cost_cell(row: UsageRow, *, compact: bool = False) -> str:
    """The cost of a row's priced calls; "no price" when none has one, never $0."""
    cost = _cost(row)
    unpriced, tokens = _unpriced(row)
    if cost is None:
        return (
            '<td class="num"><span class="none">no price</span></td>'
            if row.requests
            else f'<td class="num">{_DASH}</td>'
        )
    if not unpriced:
        return f'<td class="num">{_e(_money(cost))}</td>'
    why = f"{unpriced:,} calls ({tokens:,} tokens) without a price are not in this cost"
    extra = "*" if compact else f"+{_count(unpriced)} unpriced"
    shown = f'{_e(_money(cost))} <span class="hint">{extra}</span>'
    return f'<td class="num" title="{_e(why)}">{shown}</td>'


def _cards(view: _View, data: _Data) -> str:
    use = data.total.usage[0] if data.total.usage else None
    lat = data.total.latency[0] if data.total.latency else None
    if use is None or lat is None:
        return ""
    approx = "≈" if _approximate(lat.request) else ""

    def card(ident: str, label: str, value: str, note: str = "") -> str:
        return (
            f'<div class="card" id="kpi-{ident}"><div class="label">{_e(label)}</div>'
            f'<div class="value">{value}</div><div class="note">{note}</div></div>'
        )

    cards = [
        card("requests", "Requests", _e(_count(use.requests)), f"{_e(_count(use.users))} users"),
        card(
            "errors",
            "Errors",
            f'<span class="{"bad" if use.errors else ""}">{_e(_count(use.errors))}</span>',
            f"{_e(_percent(use.error_rate))} of calls · "
            f"{_e(_count(use.rate_limited))} rate-limited",
        ),
        card(
            "tokens",
            "Tokens",
            _e(_compact(use.total_tokens)),
            f"{_e(_compact(use.prompt_tokens))} in · {_e(_compact(use.completion_tokens))} out",
        ),
    ]
    cost = _cost(use)
    unpriced, _ = _unpriced(use)
    value = _e(_money(cost)) if cost is not None else '<span class="none">no price</span>'
    if not use.requests:
        value = _DASH
    note = (
        (f"+ {_e(_count(unpriced))} calls unpriced" if unpriced else "every call priced")
        if use.requests
        else ""
    )
    cards.append(card("cost", "Cost (USD)", value, note))
    cards += [
        card(
            "p50",
            "Latency p50",
            _e(approx + _duration(lat.request.p50)) if lat.request.p50 is not None else _DASH,
            f"over {_e(_count(lat.request.count))} timed calls",
        ),
        card(
            "p95",
            "Latency p95 / p99",
            _e(approx + _duration(lat.request.p95)) if lat.request.p95 is not None else _DASH,
            "p99 " + _e(_duration(lat.request.p99))
            if lat.request.p99 is not None
            else "p95 from 20 calls, p99 from 100",
        ),
    ]
    return f'<section class="cards">{"".join(cards)}</section>'


def _unpriced_notice(data: _Data) -> str:
    if not data.total.usage:
        return ""
    calls, tokens = _unpriced(data.total.usage[0])
    if not calls:
        return ""
    return (
        f'<div class="notice" id="unpriced"><strong>Unpriced:</strong> {_e(_count(calls))} '
        f"call{'s' if calls != 1 else ''} ({_e(_count(tokens))} tokens) in this window have no "
        "price: they are left out of the cost, not counted as $0.</div>"
    )


def _charts(root: str, view: _View, data: _Data) -> str:
    stats = data.series
    starts: list[datetime] = []
    ends: list[datetime] = []
    index: dict[datetime, int] = {}
    groups: dict[tuple[tuple[bool, str], ...], Mapping[str, str | None]] = {}
    requests: dict[tuple[tuple[bool, str], ...], int] = {}
    for row in stats.usage:
        if row.start not in index:
            index[row.start] = len(starts)
            starts.append(row.start)
            ends.append(row.end)
        key = _label_key(row.group)
        groups.setdefault(key, row.group)
        requests[key] = requests.get(key, 0) + row.requests
    ranked = sorted((k for k in groups if requests[k]), key=lambda k: (-requests[k], k))
    top = ranked[:_MAX_SERIES]
    rest = set(ranked[_MAX_SERIES:])
    colors = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(top)}
    n = len(starts)
    axis = time_axis(starts, ends, view.bucket, view.zone)

    def additive(value: Callable[[UsageRow], float | None]) -> list[Series]:
        table: dict[tuple[tuple[bool, str], ...], list[float | None]] = {k: [None] * n for k in top}
        other: list[float | None] = [None] * n
        for row in stats.usage:
            key = _label_key(row.group)
            i = index[row.start]
            v = value(row)
            if key in colors:
                table[key][i] = v
            elif key in rest and v is not None:
                other[i] = (other[i] or 0) + v
        result = [Series(_label(groups[k]), table[k], colors[k]) for k in top]
        if rest:
            result.append(Series(f"other ({len(rest)})", other, OTHER_COLOR))
        return result

    def percentile(pick: Callable[[LatencyStats], int | None]) -> list[Series]:
        table: dict[tuple[tuple[bool, str], ...], list[float | None]] = {k: [None] * n for k in top}
        for row in stats.latency:
            key = _label_key(row.group)
            if key in colors:
                v = pick(row.request)
                table[key][index[row.start]] = None if v is None else float(v)
        return [Series(_label(groups[k]), table[k], colors[k]) for k in top[:_MAX_LINES]]

    by_text = ", ".join(view.by) if view.by else "all calls"
    per = f"per {view.bucket} · by {_e(by_text)}"
    csv_href = _href(root, "/", view.state, format="csv", table="series")

    def panel(ident: str, title: str, svg: str, hint: str = "") -> str:
        return _panel(title, svg, hint=per + hint, csv_href=csv_href, ident=f"chart-{ident}")

    def counts(value: Callable[[UsageRow], int], title: str, empty: str) -> str:
        return chart(
            "bar",
            title=title,
            axis=axis,
            series=additive(lambda r: float(value(r))),
            fmt=lambda v: _count(int(v)),
            tick_fmt=_compact,
            integer=True,
            empty=empty,
        )

    def latency(pick: Callable[[LatencyStats], int | None], title: str, empty: str) -> str:
        return chart(
            "line",
            title=title,
            axis=axis,
            series=percentile(pick),
            fmt=_duration,
            tick_fmt=_ms_tick,
            integer=True,
            empty=empty,
        )

    panels = [
        panel(
            "requests",
            "Requests",
            counts(lambda r: r.requests, "Requests", "No LLM calls in this window"),
        ),
        panel("errors", "Errors", counts(lambda r: r.errors, "Errors", "No errors in this window")),
    ]
    unpriced_by_bucket = [0] * n
    for row in stats.usage:
        unpriced_by_bucket[index[row.start]] += _unpriced(row)[0]
    extra = [f"{u:,} calls without a price, not counted" if u else "" for u in unpriced_by_bucket]
    cost_chart = chart(
        "bar",
        title="Cost in USD",
        axis=axis,
        series=additive(lambda r: None if (c := _cost(r)) is None else float(c)),
        fmt=lambda v: _money(v),
        tick_fmt=_money_tick,
        empty="No priced calls in this window",
        tooltip_extra=extra,
    )
    panels += [
        panel("cost", "Cost (USD)", cost_chart, " · calls without a price are left out"),
        panel(
            "tokens",
            "Tokens",
            counts(lambda r: r.total_tokens, "Tokens", "No token counts in this window"),
            " · prompt and completion",
        ),
    ]
    panels += [
        panel(
            "p50",
            "Latency p50",
            latency(lambda s: s.p50, "Request latency, p50", "No timed calls in this window"),
            f" · top {_MAX_LINES}",
        ),
        panel(
            "p95",
            "Latency p95",
            latency(
                lambda s: s.p95,
                "Request latency, p95",
                "Too few calls per bucket (p95 needs 20)",
            ),
            f" · top {_MAX_LINES}, buckets of 20 calls or more",
        ),
    ]
    return f'<div class="grid">{"".join(panels)}</div>'


def _group_table(
    root: str, view: _View, name: str, title: str, stats: _Stats, *, compact: bool = False
) -> str:
    """A top-N table of one grouping; ``compact`` (half width) merges the token columns
    and leaves out p99."""
    by = _GROUP_TABLES[name]
    ranked = stats.ranked()
    headers: list[tuple[str, bool]] = [(_GROUP_TITLES[by], False)]
    headers.append(("Calls", True) if compact else ("Requests", True))
    headers += [("Errors", True)] if compact else [("Errors", True), ("Error rate", True)]
    headers += [("Tokens", True)] if compact else [("Tokens in", True), ("Tokens out", True)]
    headers.append(("Cost", True))
    headers += [("p50", True), ("p95", True)] + ([] if compact else [("p99", True)])
    rows = []
    marked = False
    for use, lat in ranked[:_TOP_ROWS]:
        approx = _approximate(lat.request)
        cells = [_name_cell(use.group.get(by), 22 if compact else 60), _count_cell(use.requests)]
        if compact:
            share = f"{(use.error_rate or 0) * 100:.0f}%"
            rate = f' <span class="hint">{_e(share)}</span>' if use.errors else ""
            cells.append(
                f'<td class="num{" bad" if use.errors else ""}">{_e(_count(use.errors))}{rate}</td>'
            )
        else:
            cells += [
                _count_cell(use.errors, bad=True),
                f'<td class="num">{_e(_percent(use.error_rate))}</td>',
            ]
        if compact:
            cells.append(_count_cell(use.total_tokens))
        else:
            cells += [_count_cell(use.prompt_tokens), _count_cell(use.completion_tokens)]
        cells.append(_cost_cell(use, compact=compact))
        marked = marked or (compact and _cost(use) is not None and _unpriced(use)[0] > 0)
        cells += [
            _latency_cell(lat.request.p50, approx),
            _latency_cell(lat.request.p95, approx),
        ]
        if not compact:
            cells.append(_latency_cell(lat.request.p99, approx))
        rows.append(f"<tr>{''.join(cells)}</tr>")
    if not ranked:
        body = '<p class="more">No LLM calls in this window.</p>'
    else:
        body = _table(headers, rows)
        notes = []
        if len(ranked) > _TOP_ROWS:
            notes.append(f"The top {_TOP_ROWS} of {len(ranked):,}; the CSV has them all.")
        if marked:
            notes.append("* Some calls have no price and are not in the cost.")
        if notes:
            body += f'<p class="more">{" ".join(notes)}</p>'
    return _panel(
        title,
        body,
        hint="by requests" if compact else "by requests · latency of the provider's answer",
        csv_href=_href(root, "/", view.state, format="csv", table=name),
        ident=name,
    )


def _errors_table(root: str, view: _View, data: _Data) -> str:
    rows = [
        "<tr>"
        + _name_cell(r.type, 40)
        + f'<td class="message">{_text(r.message)}</td>'
        + f'<td class="num">{_e(_count(r.count))}</td>'
        + f'<td class="num">{_e(_when(r.last_seen, view.zone))}</td></tr>'
        for r in data.errors
    ]
    body = (
        _table([("Type", False), ("Message", False), ("Calls", True), ("Last seen", True)], rows)
        if rows
        else '<p class="more">No failed calls in this window.</p>'
    )
    return _panel(
        "Top errors",
        body,
        hint="LLM calls that failed, by error type and message",
        csv_href=_href(root, "/", view.state, format="csv", table="errors"),
        ident="errors",
    )


def _badge(status: str) -> str:
    kind = status if status in ("error", "finished", "started") else "other"
    return f'<span class="badge {kind}">{_e(status)}</span>'


def _runs_table(root: str, view: _View, data: _Data) -> str:
    rows = []
    for run in data.runs:
        link = _e(_href(root, f"/runs/{run.id}", view.state))
        rows.append(
            "<tr>"
            + f"<td>{_e(_when(run.created_at, view.zone, seconds=True))}</td>"
            + f'<td class="name"><a href="{link}">{_text(run.workflow)}</a></td>'
            + f"<td>{_badge(run.status)}</td>"
            + f'<td class="num">{_e(_duration(run.duration_ms))}</td>'
            + _count_cell(run.steps)
            + _count_cell(run.failed_steps, bad=True)
            + _name_cell(run.application, 30)
            + f'<td title="{_e(run.id)}">'
            + f'<a class="mono" href="{link}">{_e(str(run.id)[:8])}</a></td>'
            + "</tr>"
        )
    by_status: dict[str, int] = {}
    for count in data.run_counts:
        by_status[count.status] = by_status.get(count.status, 0) + count.runs
    total = sum(by_status.values())
    summary = f"{total:,} run{'s' if total != 1 else ''} started in the window"
    if by_status:
        summary += ": " + " · ".join(
            f"{n:,} {_e(status)}" for status, n in sorted(by_status.items())
        )
    body = (
        _table(
            [
                (f"Started ({view.zone_name})", False),
                ("Workflow", False),
                ("Status", False),
                ("Duration", True),
                ("Steps", True),
                ("Failed", True),
                ("Application", False),
                ("Run", False),
            ],
            rows,
        )
        if rows
        else '<p class="more">No runs started in this window.</p>'
    )
    if total > len(rows) and rows:
        body += (
            f'<p class="more">The {len(rows)} most recent; the CSV has up to {_CSV_RUN_ROWS:,}.</p>'
        )
    return _panel(
        "Runs",
        body,
        hint=summary + " · filters apply to LLM calls only",
        csv_href=_href(root, "/", view.state, format="csv", table="runs"),
        ident="runs",
    )


def _empty_state(root: str, view: _View) -> str:
    wider = " ".join(
        f'<a href="{_e(_href(root, "/", view.state, since=p, until=None))}">last {p}</a>'
        for p in ("7d", "30d", "90d")
    )
    filters = (
        f"<p>Filters in use: {_e(', '.join(view.where_text))}. "
        f'<a href="{_e(_href(root, "/", view.state, where=None))}">Remove them</a>.</p>'
        if view.where_text
        else ""
    )
    return (
        '<section class="panel empty" id="empty"><h2>Nothing recorded in this window yet</h2>'
        f"<p>No LLM calls and no runs from {_e(_when(view.since, view.zone))} to "
        f"{_e(_when(view.until, view.zone))} ({_e(view.zone_name)}).</p>{filters}"
        f"<p>Look further back: {wider}.</p>"
        "<p>Applications log here with <code>POST /events</code> (see the README), "
        "or in process with <code>eventlog.start_database_logger</code>.</p></section>"
    )


def _dashboard_page(root: str, view: _View, data: _Data, db: Database) -> str:
    calls = data.total.usage[0].requests if data.total.usage else 0
    runs = sum(c.runs for c in data.run_counts)
    sections: list[str] = [_form(root, _QueryOf(view), view), _presets(root, view)]
    if not calls and not runs:
        sections.append(_empty_state(root, view))
    else:
        sections.append(_cards(view, data))
        sections.append(_unpriced_notice(data))
        if calls:
            sections.append(_charts(root, view, data))
        else:
            sections.append(
                '<div class="notice">No LLM calls in this window'
                + (" with these filters" if view.where_text else "")
                + ".</div>"
            )
        sections.append(_group_table(root, view, "models", "Top models", data.tables["models"]))
        sections.append(
            '<div class="grid">'
            + _group_table(root, view, "users", "Top users", data.tables["users"], compact=True)
            + _group_table(
                root,
                view,
                "applications",
                "Top applications",
                data.tables["applications"],
                compact=True,
            )
            + "</div>"
        )
        sections.append(_errors_table(root, view, data))
        sections.append(_runs_table(root, view, data))
    footer = (
        f"<footer>Times in {_e(view.zone_name)}. Latency percentiles are exact (nearest rank); "
        "p95 needs 20 calls, p99 100. Read at "
        f"{_e(_when(view.now, view.zone, seconds=True))}.</footer>"
    )
    body = (
        _header(root, view.state, _window_text(view), db)
        + f"<main>{''.join(sections)}{footer}</main>"
    )
    return _document("eventlog · dashboard", body)


class _QueryOf:
    """A view's state as the query parameters ``_form`` reads."""

    def __init__(self, view: _View) -> None:
        self._pairs = view.state

    def getlist(self, name: str) -> list[str]:
        return [v for k, v in self._pairs if k == name]


def _problem_page(problem: _Problem, root: str, params: Any, view: _View | None) -> Response:
    titles = {400: "Bad request", 404: "Not found", 503: "The database cannot be read"}
    title = titles.get(problem.status, "Error")
    if problem.parameter is not None:
        title = f"Bad query parameter “{problem.parameter}”"
    state = [(k, v) for k, v in params.multi_items() if k not in ("format", "table", "token")]
    box = (
        f'<section class="problem" id="problem"><h1>{_e(title)}</h1>'
        f'<p class="mono">{_e(problem)}</p></section>'
    )
    form = _form(root, params, None) if problem.status == 400 else ""
    back = f'<p><a href="{_e(_href(root, "/", state))}">Back to the dashboard</a></p>'
    body = _header(root, state, "", None) + f"<main>{box}{form}{back}</main>"
    headers = {"X-Eventlog-Parameter": problem.parameter} if problem.parameter else None
    return _html(_document(f"eventlog · {title}", body), problem.status, headers)


# -- a run --------------------------------------------------------------------------------


def _depths(steps: Sequence[StepRow]) -> dict[uuid.UUID, int]:
    parents = {s.id: s.parent_step for s in steps}
    depths: dict[uuid.UUID, int] = {}
    for step in steps:
        depth, parent, seen = 0, parents.get(step.id), {step.id}
        while parent is not None and parent in parents and parent not in seen and depth < 8:
            seen.add(parent)
            depth += 1
            parent = parents.get(parent)
        depths[step.id] = depth
    return depths


def _timeline(detail: RunDetail) -> str:
    """The run and its steps as horizontal bars from the run's start, one row each (a
    step with no start logged is left out)."""
    run = detail.run
    workflow = run.workflow or "(none)"
    depths = _depths(detail.steps)

    def row(
        kind: str, label: str, start: int, length: int | None, status: str, tip: str, indent: int
    ) -> TimelineRow:
        return TimelineRow(
            label=label,
            start=start,
            length=length,
            text=_duration(length) if length is not None else "no end logged",
            tip=tip,
            color={"error": "#d64f45", "started": "#e6a23c"}.get(status, "#4e79a7"),
            css_class=f"{kind} {status}",
            indent=indent,
        )

    summary = f"run {run.id}\n{workflow} · {run.status} · {_duration(run.duration_ms)}"
    rows = [row("run", f"run · {workflow}", 0, run.duration_ms, run.status, summary, 0)]
    for step in detail.steps:
        if step.offset_ms is None:
            continue
        name = f"{step.type or '(none)'} · {step.name or '(none)'}"
        tip = (
            f"{name}\n+{_duration(step.offset_ms)} from the run's start · "
            f"{_duration(step.duration_ms)} · {step.status}\nstep {step.id}"
        )
        indent = depths.get(step.id, 0)
        rows.append(row("step", name, step.offset_ms, step.duration_ms, step.status, tip, indent))
    return timeline(rows, title="the run's steps on a timeline", tick_fmt=_ms_tick)


def _run_page(root: str, params: Any, zone: tzinfo, detail: RunDetail) -> str:
    run = detail.run
    zone_name = getattr(zone, "key", "UTC")
    state = [
        (k, v)
        for k, v in params.multi_items()
        if k in ("since", "until", "by", "bucket", "tz", "where") and v.strip()
    ]
    failed = (
        f' <span class="bad">({_count(run.failed_steps)} failed)</span>' if run.failed_steps else ""
    )
    facts = [
        (f"Started ({zone_name})", _e(_when(run.created_at, zone, seconds=True))),
        ("Duration", _e(_duration(run.duration_ms))),
        ("Steps", f"{_count(run.steps)}{failed}"),
        ("LLM calls", _e(_count(detail.llm_calls))),
        ("Application", _text(run.application)),
        ("Environment", _text(run.environment)),
        ("Run id", f'<span class="mono">{_e(run.id)}</span>'),
    ]
    cards = (
        f'<section class="panel" id="run-summary"><h1>{_text(run.workflow)} '
        f'{_badge(run.status)}</h1><dl class="facts">'
        + "".join(f"<div><dt>{_e(label)}</dt><dd>{value}</dd></div>" for label, value in facts)
        + "</dl></section>"
    )
    unplaced = [s for s in detail.steps if s.offset_ms is None]
    note = (
        f'<p class="more">{len(unplaced)} step{"s" if len(unplaced) != 1 else ""} with no '
        "start logged: listed below, not drawn.</p>"
        if unplaced
        else ""
    )
    chart_panel = _panel(
        "Timeline",
        (_timeline(detail) if detail.steps else '<p class="more">This run has no steps.</p>')
        + note,
        hint="offset from the run's start; red: failed, dashed: no end logged",
        ident="timeline",
    )
    rows = []
    for step in detail.steps:
        rows.append(
            "<tr>"
            + f'<td class="num">{_offset(step.offset_ms)}</td>'
            + f'<td class="num">{_e(_duration(step.duration_ms))}</td>'
            + f"<td>{_badge(step.status)}</td>"
            + _name_cell(step.type, 30)
            + _name_cell(step.name)
            + f'<td class="mono">{_e(step.id)}</td>'
            + "</tr>"
        )
    steps_panel = _panel(
        "Steps",
        _table(
            [
                ("Start", True),
                ("Duration", True),
                ("Status", False),
                ("Type", False),
                ("Name", False),
                ("Step id", False),
            ],
            rows,
        )
        if rows
        else '<p class="more">This run has no steps.</p>',
        hint="in start order",
        csv_href=_href(
            root,
            f"/runs/{run.id}",
            [(k, v) for k, v in params.multi_items() if k == "tz"],
            format="csv",
            table="steps",
        ),
        ident="steps",
    )
    back = f'<p><a href="{_e(_href(root, "/", state))}">← Back to the dashboard</a></p>'
    body = (
        _header(root, state, f"run <span class=mono>{_e(run.id)}</span>", None)
        + f"<main>{back}{cards}{chart_panel}{steps_panel}</main>"
    )
    return _document(f"eventlog · run {run.id}", body)
