"""The dashboard of ``eventlog serve`` (``GET /``, ``GET /runs/{run_id}``), end to end.

One data set of LLM calls and runs at fixed times around a fixed ``NOW`` is written with
the real writer path (``Database.write_log_batch``) into a real SQLite file and a real
PostgreSQL database. The figures the page shows are checked against SQL run here on the
tables (never through :mod:`eventlog.analytics`, which the page itself uses).

The browser tests drive Debian's Chromium (``/usr/bin/chromium``) with Playwright
against the collector on uvicorn on a loopback port; they are skipped with the reason
when that Chromium is missing, unless ``EVENTLOG_REQUIRE_BROWSER=1`` (CI), when they
fail. Each leaves full-page screenshots in ``tests/artifacts/``. The other tests run the
app in process over httpx's ASGI transport.
"""

from __future__ import annotations

import csv
import io
import os
import re
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import pytest
import uvicorn
from sqlalchemy import case, func, select

from eventlog import (
    Database,
    EventPayload,
    InternalMetadata,
    ProxyLogEntry,
    ProxyLogEvent,
    RequestMetadata,
    RunStartEvent,
    RunUpdateEvent,
    StepEndEvent,
    StepErrorEvent,
    StepStartEvent,
    analytics,
    open_database,
)
from eventlog.page import COOKIE, TABLES
from eventlog.schema import chronicle_events, chronicle_runs, chronicle_steps
from eventlog.server import bind_socket, create_app
from eventlog.testing import MemoryDatabase

CHROMIUM = Path("/usr/bin/chromium")
REQUIRE_BROWSER = os.environ.get("EVENTLOG_REQUIRE_BROWSER") == "1"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).parent / "artifacts"

NOW = datetime(2026, 3, 30, 12, 0, tzinfo=UTC)
SINCE = NOW - timedelta(hours=24)
WINDOW = {"since": "2026-03-29T12:00:00Z", "until": "2026-03-30T12:00:00Z"}
HOSTILE_MODEL = "<script>alert('model')</script>"
HOSTILE_USER = '"><img src=x onerror=alert(1)>'
HOSTILE_WORKFLOW = "summarise <b>now</b>"
PLAN = {"gpt-4o": 24, "claude-sonnet": 13, "mistral-large": 7, HOSTILE_MODEL: 3}
USERS = ["alice", "bob", "carol", None, HOSTILE_USER]
APPS = ["chat", "search"]
TOKEN = "page-s3cret"

RUN_OK = uuid.UUID(int=1)
RUN_FAILED = uuid.UUID(int=2)
RUN_OPEN = uuid.UUID(int=3)
RUN_OLD = uuid.UUID(int=4)


def _calls() -> list[ProxyLogEntry]:
    calls: list[ProxyLogEntry] = []
    k = 0
    for model, n in PLAN.items():
        for _ in range(n):
            k += 1
            # Distinct minutes spread over the 24 hours before NOW.
            at = NOW - timedelta(minutes=(k * 53) % 1439 + 1, seconds=k % 60)
            calls.append(
                ProxyLogEvent(
                    timestamp=at,
                    provider="p",
                    model=model,
                    request={"model": model},
                    response={"usage": {"prompt_tokens": 10 + k, "completion_tokens": k % 7}},
                    latency=timedelta(milliseconds=100 + 37 * k),
                    error=(
                        {"type": "RateLimitError", "message": "slow down"} if k % 5 == 0 else None
                    ),
                    metadata=RequestMetadata(application=APPS[k % 2]),
                    internal_metadata=InternalMetadata(user_id=USERS[k % len(USERS)]),
                )
            )
    # Outside the window: before it, and at its end (the end is excluded).
    calls.append(ProxyLogEvent(timestamp=SINCE - timedelta(hours=3), model="gpt-4o"))
    calls.append(ProxyLogEvent(timestamp=NOW, model="claude-sonnet", error="late"))
    # Not an LLM call: never counted as a request.
    calls.append(EventPayload(type="cache_hit", time=NOW - timedelta(hours=1)))
    return calls


def _run(
    run_id: uuid.UUID, name: str, start: datetime, steps: Sequence[tuple[str, str, int, int, str]]
) -> list[ProxyLogEntry]:
    """A run and its steps: (type, name, offset ms, duration ms, end) with end one of
    finished, error, open (no end), or headless (an end whose start was never logged)."""
    entries: list[ProxyLogEntry] = [RunStartEvent(id=run_id, name=name, time=start)]
    for i, (kind, step_name, offset, duration, end) in enumerate(steps):
        step_id = uuid.UUID(int=run_id.int * 100 + i)
        begin = start + timedelta(milliseconds=offset)
        finish = begin + timedelta(milliseconds=duration)
        if end != "headless":
            entries.append(
                StepStartEvent(
                    step_id=step_id, run_id=run_id, type=kind, name=step_name, time=begin
                )
            )
        if end in ("finished", "headless"):
            entries.append(StepEndEvent(step_id=step_id, run_id=run_id, time=finish))
        elif end == "error":
            entries.append(StepErrorEvent(step_id=step_id, run_id=run_id, error="x", time=finish))
    return entries


def _runs() -> list[ProxyLogEntry]:
    entries = _run(
        RUN_OK,
        "triage",
        NOW - timedelta(hours=5),
        [("llm", "classify", 0, 1200, "finished"), ("tool", "search", 1300, 800, "finished")],
    )
    entries.append(
        RunUpdateEvent(id=RUN_OK, status="finished", time=NOW - timedelta(hours=5, seconds=-3))
    )
    entries += _run(
        RUN_FAILED,
        "triage",
        NOW - timedelta(hours=2),
        [
            ("llm", "classify", 0, 400, "finished"),
            ("tool", "fetch", 450, 2500, "error"),
            ("llm", "retry", 3000, 700, "finished"),
            ("tool", "cleanup", 0, 0, "headless"),
        ],
    )
    entries.append(
        RunUpdateEvent(id=RUN_FAILED, status="error", time=NOW - timedelta(hours=2, seconds=-4))
    )
    entries += _run(
        RUN_OPEN, HOSTILE_WORKFLOW, NOW - timedelta(minutes=30), [("llm", "draft", 10, 0, "open")]
    )
    entries += _run(RUN_OLD, "triage", SINCE - timedelta(days=1), [("llm", "x", 0, 5, "finished")])
    return entries


ENTRIES = [*_calls(), *_runs()]


async def load(db: Database, entries: Sequence[ProxyLogEntry] = ENTRIES) -> None:
    for i in range(0, len(entries), 50):
        await db.write_log_batch(entries[i : i + 50])


# -- independent expectations: SQL on the tables ------------------------------------------

events = chronicle_events.c


def _in_window(*more: Any) -> list[Any]:
    return [
        events.event_type == "chronicle_llm_request",
        events.created_at >= SINCE,
        events.created_at < NOW,
        *more,
    ]


async def fetch(db: Database, statement: Any) -> list[Any]:
    async with db.engine.connect() as conn:
        return list((await conn.execute(statement)).all())


async def sql_totals(db: Database, *where: Any) -> tuple[int, int]:
    errors = func.sum(case((events.error.is_not(None), 1), else_=0))
    [(calls, failed)] = await fetch(db, select(func.count(), errors).where(*_in_window(*where)))
    return int(calls), int(failed or 0)


async def sql_by(db: Database, column: Any) -> dict[str | None, tuple[int, int]]:
    errors = func.sum(case((events.error.is_not(None), 1), else_=0))
    found = await fetch(
        db, select(column, func.count(), errors).where(*_in_window()).group_by(column)
    )
    return {name: (int(n), int(failed or 0)) for name, n, failed in found}


async def sql_runs(db: Database) -> dict[uuid.UUID, tuple[str | None, str]]:
    runs = chronicle_runs.c
    found = await fetch(
        db,
        select(runs.id, runs.name, runs.status).where(
            runs.created_at >= SINCE, runs.created_at < NOW
        ),
    )
    return {run_id: (name, status) for run_id, name, status in found}


async def sql_steps(
    db: Database, run_id: uuid.UUID
) -> list[tuple[uuid.UUID, str | None, str, bool]]:
    steps = chronicle_steps.c
    found = await fetch(
        db,
        select(steps.id, steps.name, steps.status, steps.start_time).where(steps.run_id == run_id),
    )
    return sorted((i, name, status, start is not None) for i, name, status, start in found)


def number(text: str) -> int:
    """A figure as shown (``1,234``, or ``9 16.7%`` for a count with its rate)."""
    return int(text.split()[0].replace(",", ""))


def url(path: str = "/", **params: str) -> str:
    return f"{path}?{urlencode({**WINDOW, **params})}"


# -- servers ------------------------------------------------------------------------------


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port, in a thread; yield its URL."""
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
        assert not thread.is_alive(), "the server did not stop within 60 s"


@asynccontextmanager
async def in_process(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app on httpx's ASGI transport, its lifespan entered as a host app would."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://collector") as http:
            yield http


def require_browser() -> None:
    if CHROMIUM.exists():
        return
    reason = (
        f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium); the dashboard's "
        "browser tests need it"
    )
    if REQUIRE_BROWSER:
        pytest.fail(f"EVENTLOG_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(f"{reason}; set EVENTLOG_REQUIRE_BROWSER=1 to fail instead")


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """Debian's Chromium under Playwright (never ``playwright install``'s download)."""
    require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


class Watched:
    """Every request a page makes, and every dialog (an alert would be injected script)."""

    def __init__(self, page: Any) -> None:
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("dialog", self._dialog)

    async def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()

    def assert_local(self, base: str) -> None:
        origin = urlsplit(base)
        assert self.requests
        for requested in self.requests:
            parts = urlsplit(requested)
            assert parts.scheme == "data" or (parts.hostname, parts.port) == (
                origin.hostname,
                origin.port,
            ), f"the page asked another host: {requested}"
        assert self.dialogs == []


async def table_rows(page: Any, section: str) -> list[list[str]]:
    """The cells of a table on the page; a name cell gives its full text (its title)."""
    rows = []
    for row in await page.locator(f"#{section} tbody tr").all():
        cells = []
        for cell in await row.locator("td").all():
            title = await cell.get_attribute("title")
            cells.append(title if title is not None else (await cell.inner_text()).strip())
        rows.append(cells)
    return rows


def shown_name(text: str) -> str | None:
    return None if text == "(none)" else text


async def chart_total(page: Any, ident: str) -> dict[str, int]:
    """The values in a chart's tooltips (one per bucket: ``series: value`` lines), summed
    per series."""
    totals: dict[str, int] = {}
    for title in await page.locator(f"#{ident} svg rect.hit > title").all_text_contents():
        for line in title.splitlines()[1:]:
            name, sep, value = line.rpartition(": ")
            if sep:
                totals[name] = totals.get(name, 0) + number(value)
    return totals


# -- in a real browser, on both backends ---------------------------------------------------


async def test_the_dashboard_shows_what_the_tables_hold_and_asks_no_other_host(
    db: Database, db_url: str, backend: str
) -> None:
    await load(db)
    ARTIFACTS.mkdir(exist_ok=True)
    calls, errors = await sql_totals(db)
    models = await sql_by(db, events.model)
    users = await sql_by(db, events.user_id)
    applications = await sql_by(db, events.application)
    runs = await sql_runs(db)
    assert calls == sum(PLAN.values())
    assert errors > 0

    with running(create_app(db_url)) as base:
        async with chromium() as browser:
            page = await browser.new_page(viewport={"width": 1360, "height": 900})
            watched = Watched(page)
            answer = await page.goto(base + url(tz="UTC"))
            assert answer is not None
            assert answer.status == 200
            assert await page.title() == "eventlog · dashboard"

            assert number(await page.locator("#kpi-requests .value").inner_text()) == calls
            assert number(await page.locator("#kpi-errors .value").inner_text()) == errors
            for section, expected in (
                ("models", models),
                ("users", users),
                ("applications", applications),
            ):
                shown = {
                    shown_name(cells[0]): (number(cells[1]), number(cells[2]))
                    for cells in await table_rows(page, section)
                }
                assert shown == expected, section
            # Top tables are ordered by requests.
            first = (await table_rows(page, "models"))[0][0]
            assert first == max(models, key=lambda m: models[m][0])
            # The charts hold the same calls: their tooltips sum to the totals per model.
            assert await chart_total(page, "chart-requests") == {
                name: n for name, (n, _) in models.items() if name is not None
            }
            assert sum((await chart_total(page, "chart-errors")).values()) == errors

            listed = {cells[-1] for cells in await table_rows(page, "runs")}
            assert listed == {str(run_id) for run_id in runs}  # the run id is the title
            await page.screenshot(path=ARTIFACTS / f"dashboard-{backend}.png", full_page=True)

            # A run's page, by its link: every step, placed ones drawn from the run start.
            await page.locator(f'#runs td[title="{RUN_FAILED}"] a').click()
            await page.wait_for_url(lambda address: f"/runs/{RUN_FAILED}?" in address)
            steps = await sql_steps(db, RUN_FAILED)
            shown_steps = sorted(
                (uuid.UUID(cells[5]), shown_name(cells[4]), cells[2])
                for cells in await table_rows(page, "steps")
            )
            assert shown_steps == [(i, name, status) for i, name, status, _ in steps]
            bars = page.locator("#timeline svg rect.span")
            assert await bars.count() == 1 + sum(started for *_, started in steps)
            assert await page.locator("#timeline svg g.step.error").count() == 1
            await page.screenshot(path=ARTIFACTS / f"run-{backend}.png", full_page=True)

            # Back to the dashboard with the same window.
            await page.locator("text=Back to the dashboard").click()
            await page.wait_for_url(lambda address: urlsplit(address).path == "/")
            assert number(await page.locator("#kpi-requests .value").inner_text()) == calls
            watched.assert_local(base)


async def test_the_filter_form_narrows_the_dashboard_without_script(
    db: Database, db_url: str
) -> None:
    await load(db)
    alice, _ = await sql_totals(db, events.user_id == "alice")
    with running(create_app(db_url)) as base:
        async with chromium() as browser:
            page = await browser.new_page(java_script_enabled=False)
            watched = Watched(page)
            await page.goto(base + url())
            await page.locator('input[name="where"]').last.fill("user_id=alice")
            await page.locator('select[name="bucket"]').select_option("hour")
            await page.locator('input[name="tz"]').fill("Europe/Berlin")
            await page.locator('button[type="submit"]').click()
            await page.wait_for_url(lambda address: "where=user_id%3Dalice" in address)
            assert number(await page.locator("#kpi-requests .value").inner_text()) == alice
            assert "Europe/Berlin" in await page.locator("header").inner_text()
            assert await page.locator('input[name="where"]').first.input_value() == (
                "user_id=alice"
            )
            watched.assert_local(base)


async def test_with_a_token_the_page_takes_it_once_and_keeps_a_strict_http_only_cookie(
    tmp_path: Path,
) -> None:
    app = create_app(f"sqlite:///{tmp_path / 'events.db'}", migrate=True, token=TOKEN)
    with running(app) as base:
        async with chromium() as browser:
            context = await browser.new_context()
            page = await context.new_page()
            watched = Watched(page)
            refused = await page.goto(base + "/")
            assert refused is not None
            assert refused.status == 401
            assert "Token required" in await page.locator("h1").inner_text()

            await page.goto(base + url(token=TOKEN))
            await page.wait_for_url(lambda address: "token=" not in address)
            assert "token=" not in page.url
            assert "since=" in page.url
            assert await page.locator("#empty").count() == 1
            [cookie] = await context.cookies()
            assert cookie["name"] == COOKIE
            assert cookie["httpOnly"] is True
            assert cookie["sameSite"] == "Strict"
            assert TOKEN not in cookie["value"]
            again = await page.goto(base + "/")
            assert again is not None
            assert again.status == 200
            watched.assert_local(base)

            stranger = await browser.new_page()
            wrong = await stranger.goto(base + "/?token=guess")
            assert wrong is not None
            assert wrong.status == 401

        # The cookie opens the pages only: the API still wants the bearer token.
        async with httpx.AsyncClient(
            base_url=base, cookies={COOKIE: cookie["value"]}, trust_env=False
        ) as http:
            assert (await http.get("/")).status_code == 200
            assert (await http.post("/events", json={"events": []})).status_code == 401
            assert (await http.get("/metrics")).status_code == 401
            bearer = {"authorization": f"Bearer {TOKEN}"}
            assert (await http.get("/metrics", headers=bearer)).status_code == 200
        async with httpx.AsyncClient(base_url=base, trust_env=False) as http:
            assert (await http.get("/", headers=bearer)).status_code == 200


# -- over HTTP, no browser -----------------------------------------------------------------


def read_csv(answer: httpx.Response) -> list[dict[str, str]]:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert re.fullmatch(
        r'attachment; filename="eventlog-[a-z0-9-]+(-\d{8}T\d{4}Z){0,2}(-steps)?\.csv"',
        answer.headers["content-disposition"],
    ), answer.headers["content-disposition"]
    return list(csv.DictReader(io.StringIO(answer.text)))


def kpi(page: str, name: str) -> int:
    found = re.search(rf'id="kpi-{name}">.*?<div class="value">(?:<span[^>]*>)?([\d,]+)', page)
    assert found, f"no {name} figure on the page"
    return number(found[1])


async def test_every_table_downloads_as_csv_with_the_figures_of_the_tables(
    db: Database, db_url: str
) -> None:
    await load(db)
    models = await sql_by(db, events.model)
    users = await sql_by(db, events.user_id)
    calls, _ = await sql_totals(db)
    async with in_process(create_app(db_url)) as http:
        answers = {t: await http.get(url(table=t, format="csv", bucket="hour")) for t in TABLES}
        steps = await http.get(f"/runs/{RUN_FAILED}?format=csv&table=steps")
    tables = {name: read_csv(answer) for name, answer in answers.items()}
    assert answers["models"].headers["content-disposition"] == (
        'attachment; filename="eventlog-models-20260329T1200Z-20260330T1200Z.csv"'
    )
    # Models: every one (formula-like text is defused with a leading apostrophe).
    assert {r["model"]: (int(r["requests"]), int(r["errors"])) for r in tables["models"]} == {
        name: counts for name, counts in models.items()
    }
    assert {r["user"] or None: int(r["requests"]) for r in tables["users"]} == {
        name: n for name, (n, _) in users.items()
    }
    series = tables["series"]
    assert len({r["start"] for r in series}) == 24  # hour buckets, empty ones included
    assert sum(int(r["requests"]) for r in series) == calls
    assert {r["id"] for r in tables["runs"]} == {str(i) for i in await sql_runs(db)}
    assert sum(int(r["count"]) for r in tables["errors"]) == (await sql_totals(db))[1]
    assert sorted(uuid.UUID(r["id"]) for r in read_csv(steps)) == [
        i for i, *_ in await sql_steps(db, RUN_FAILED)
    ]


async def test_a_filter_in_the_url_narrows_the_figures(db: Database, db_url: str) -> None:
    await load(db)
    alice, alice_errors = await sql_totals(db, events.user_id == "alice")
    chat, _ = await sql_totals(db, events.application == "chat", events.user_id == "alice")
    async with in_process(create_app(db_url)) as http:
        one = (await http.get(url(where="user_id=alice", by="user"))).text
        both = (await http.get(url() + "&where=user_id%3Dalice&where=application%3Dchat")).text
    assert (kpi(one, "requests"), kpi(one, "errors")) == (alice, alice_errors)
    assert kpi(both, "requests") == chat


async def test_an_empty_database_shows_a_friendly_empty_state(db: Database, db_url: str) -> None:
    async with in_process(create_app(db_url)) as http:
        answer = await http.get("/")
        runs = await http.get("/?since=90d")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert 'id="empty"' in answer.text
    assert "Nothing recorded in this window yet" in answer.text
    assert runs.status_code == 200
    assert 'id="empty"' in runs.text


async def sqlite_with(path: Path, entries: Sequence[ProxyLogEntry]) -> str:
    """The URL of a new SQLite file holding ``entries``."""
    database_url = f"sqlite:///{path}"
    db = await open_database(database_url, migrate=True)
    try:
        await load(db, entries)
    finally:
        await db.close()
    return database_url


@pytest.fixture
async def sqlite_app(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The collector on a SQLite file with the data set, in process."""
    async with in_process(create_app(await sqlite_with(tmp_path / "events.db", ENTRIES))) as http:
        yield http


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("since=yesterday", "since"),
        ("until=soon", "until"),
        ("since=1h&until=2h", "since"),
        ("tz=Mars/Olympus", "tz"),
        ("by=colour", "by"),
        ("bucket=fortnight", "bucket"),
        ("since=90d&bucket=minute", "bucket"),
        ("where=justakey", "where"),
        ("where=retries%3Dmany", "where"),
        ("format=xml", "format"),
        ("format=csv&table=secrets", "table"),
        ("format=csv", "table"),
    ],
)
async def test_a_bad_query_parameter_is_a_400_page_that_names_it(
    sqlite_app: httpx.AsyncClient, query: str, parameter: str
) -> None:
    answer = await sqlite_app.get(f"/?{query}")
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert answer.headers["x-eventlog-parameter"] == parameter
    assert f"Bad query parameter “{parameter}”" in answer.text
    assert '<form class="filters"' in answer.text  # to fix it from there


async def test_a_run_page_is_404_for_an_unknown_run_and_400_for_a_bad_id(
    sqlite_app: httpx.AsyncClient,
) -> None:
    unknown = await sqlite_app.get(f"/runs/{uuid.UUID(int=99)}")
    bad = await sqlite_app.get("/runs/not-a-uuid")
    table = await sqlite_app.get(f"/runs/{RUN_OK}?format=csv&table=runs")
    assert unknown.status_code == 404
    assert "no run 00000000-0000-0000-0000-000000000063" in unknown.text
    assert bad.status_code == 400
    assert bad.headers["x-eventlog-parameter"] == "run_id"
    assert table.status_code == 400
    assert table.headers["x-eventlog-parameter"] == "table"


async def test_values_from_the_database_are_escaped_everywhere(
    sqlite_app: httpx.AsyncClient,
) -> None:
    dashboard = await sqlite_app.get(url(by="user"))
    run = await sqlite_app.get(f"/runs/{RUN_OPEN}")
    for answer in (dashboard, run):
        assert answer.status_code == 200
        assert "<script" not in answer.text
        assert "<img" not in answer.text
        assert "<b>" not in answer.text
        policy = answer.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "script-src" not in policy
    assert "&lt;script&gt;alert(&#x27;model&#x27;)&lt;/script&gt;" in dashboard.text
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in dashboard.text
    assert "summarise &lt;b&gt;now&lt;/b&gt;" in run.text


async def test_csv_cells_that_a_spreadsheet_would_run_get_an_apostrophe(tmp_path: Path) -> None:
    formula = '=HYPERLINK("http://evil.example","x")'
    call = ProxyLogEvent(timestamp=NOW - timedelta(hours=1), model=formula)
    async with in_process(create_app(await sqlite_with(tmp_path / "events.db", [call]))) as http:
        [row] = read_csv(await http.get(url(format="csv", table="models")))
    assert row["model"] == "'" + formula


async def test_the_page_says_so_when_the_collector_has_no_sql_database() -> None:
    async with in_process(create_app(db=MemoryDatabase())) as http:
        answer = await http.get("/")
    assert answer.status_code == 503
    assert "reads a SQL database" in answer.text


async def test_page_requests_are_counted_in_the_metrics_under_bounded_routes(
    sqlite_app: httpx.AsyncClient,
) -> None:
    await sqlite_app.get("/")
    await sqlite_app.get(f"/runs/{RUN_OK}")
    await sqlite_app.get(f"/runs/{uuid.uuid4()}")
    metrics = (await sqlite_app.get("/metrics")).text
    assert 'eventlog_http_requests_total{route="/",status="200"} 1.0' in metrics
    assert 'eventlog_http_requests_total{route="/runs/{run_id}",status="200"} 1.0' in metrics
    assert 'eventlog_http_requests_total{route="/runs/{run_id}",status="404"} 1.0' in metrics


async def test_a_group_that_appears_between_usage_and_latency_does_not_break_the_page(
    db: Database, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each table reads usage, then latency: a call committed in between can give the
    # second a group the first lacks ("zip() argument 2 is longer" as a 400 page).
    await load(db)
    newcomer = ProxyLogEvent(
        timestamp=NOW - timedelta(minutes=30),
        provider="openai",
        model="gpt-4o",
        latency=timedelta(milliseconds=250),
        internal_metadata=InternalMetadata(user_id="newcomer"),
    )
    read_latency = analytics.latency
    committed: list[bool] = []

    async def latency_after_a_commit(*args: Any, **kwargs: Any) -> list[analytics.LatencyRow]:
        if not committed and list(kwargs["by"]) == ["user"] and kwargs["bucket"] is None:
            committed.append(True)  # between the top users' two reads
            await db.write_log_batch([newcomer])
        return await read_latency(*args, **kwargs)

    monkeypatch.setattr(analytics, "latency", latency_after_a_commit)
    async with in_process(create_app(db_url)) as http:
        page = await http.get(url())
        users = await http.get(url(format="csv", table="users"))
    assert committed
    assert page.status_code == 200, page.text[:300]
    assert "newcomer" not in page.text  # its usage was read before it was committed
    assert users.status_code == 200, users.text[:300]
    assert "newcomer" in users.text  # both read after
