"""The ``eventlog`` command: ``demo``, ``migrate``, ``serve``, ``stats``, ``runs``,
``run``, ``tail``, ``prune``, ``dead-letters``, ``prices``, ``bench``, ``--version``.

Exit status: 0 done; 1 the database failed (or refused entries); 2 bad usage (arguments,
database URL, migration revision); 130 interrupted with Ctrl-C. The expected failures
print one line on stderr, never a traceback: a person at a terminal needs the cause, and
the traceback of a refused connection says nothing more.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import SQLAlchemyError

from eventlog import __version__, analytics
from eventlog.database import Database, normalize_url, open_database
from eventlog.deadletters import (
    StoredDeadLetter,
    count_dead_letters,
    list_dead_letter_files,
    list_dead_letters,
    retry_dead_letters,
)
from eventlog.demo import run_demo
from eventlog.exceptions import DatabaseError, EventLogError, MigrationError
from eventlog.maintenance import PruneResult, parse_age, prune
from eventlog.migrate import alembic_config, downgrade, upgrade
from eventlog.prices import Price, list_prices, price_csv_rows, read_price_file, store_prices
from eventlog.tail import follow
from eventlog.types import json_dumps

__all__ = ["DATABASE_URL_ENV", "default_url", "main"]

DATABASE_URL_ENV = "EVENTLOG_DATABASE_URL"

Handler = Callable[[argparse.Namespace, str], Coroutine[Any, Any, int]]


def default_url() -> str:
    """The database when no ``--url`` is given: ``$EVENTLOG_DATABASE_URL`` if set, else
    ``eventlog.db`` in the current folder (as an absolute URL, so messages say which)."""
    return os.environ.get(DATABASE_URL_ENV) or f"sqlite:///{Path.cwd() / 'eventlog.db'}"


class _UsageError(Exception):
    """Bad input that argparse cannot see (exit status 2)."""


def _positive_int(value: str) -> int:
    try:
        number = int(value.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return number


def _non_negative_int(value: str) -> int:
    if value.strip() in ("0", "-0"):
        return 0
    return _positive_int(value)


def _port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0-65535, got {value!r}")
    return number


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 <= number < float("inf"):
        raise argparse.ArgumentTypeError(f"must be seconds >= 0, got {value!r}")
    return number


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventlog",
        description="Batched logging of LLM calls and workflow runs into PostgreSQL or SQLite.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--url",
        help="database URL (postgresql://... or sqlite:///PATH) or a SQLite file path "
        f"(default: ${DATABASE_URL_ENV}, else eventlog.db in the current folder)",
    )

    demo = commands.add_parser(
        "demo",
        parents=[database],
        help="log a simulated LLM gateway's traffic, then summarise it",
        description="Migrate the database, log a simulated LLM gateway's calls and workflow "
        "runs through eventlog, and print a summary read back with SQL. Only adds rows.",
    )
    demo.add_argument(
        "--events",
        type=_positive_int,
        default=10_000,
        metavar="N",
        help="LLM calls to simulate; workflow events come on top (default: %(default)s)",
    )
    demo.add_argument(
        "--concurrency",
        type=_positive_int,
        default=64,
        metavar="N",
        help="simulated calls in flight at once (default: %(default)s)",
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the simulation: the same seed logs the same calls (default: %(default)s)",
    )
    demo.set_defaults(handler=_demo)

    migrate = commands.add_parser(
        "migrate",
        parents=[database],
        help="bring the database schema up to date (or down)",
        description="Upgrade the schema to the newest revision (or to --revision), or "
        "downgrade it with --downgrade.",
    )
    target = migrate.add_mutually_exclusive_group()
    target.add_argument("--revision", metavar="REV", help="upgrade to REV (default: head)")
    target.add_argument(
        "--downgrade",
        metavar="REV",
        help="downgrade to REV instead ('base' removes eventlog's tables and their data)",
    )
    migrate.set_defaults(handler=_migrate)

    dead_letters = commands.add_parser(
        "dead-letters",
        parents=[database],
        help="list the entries the database refused, or --retry them after a fix",
        description="List the dead letters: entries the database refused for good, kept "
        "in the eventlog_dead_letters table (and, when even that failed, in JSONL files). "
        "With --retry, send each one again on its own and remove those written. Exit "
        "status 1 if some are still refused.",
    )
    dead_letters.add_argument(
        "--retry", action="store_true", help="send them again; keep those still refused"
    )
    dead_letters.add_argument(
        "--limit",
        type=_positive_int,
        metavar="N",
        help="the N oldest only (default: all)",
    )
    dead_letters.add_argument(
        "--dir",
        type=Path,
        metavar="FOLDER",
        help="also the dead-letters-*.jsonl files in FOLDER (the writer's fallback folder)",
    )
    dead_letters.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per dead letter instead of a table",
    )
    dead_letters.set_defaults(handler=_dead_letters)

    serve = commands.add_parser(
        "serve",
        parents=[database],
        help="run the collector: take events over HTTP and log them to the database",
        description="Migrate the database, then take chronicle's events (POST /event, "
        "/events), LLM calls and FastChat's flat objects (POST /log) over HTTP and log "
        "them in batches. SIGTERM or Ctrl-C: stop accepting, write everything "
        "acknowledged, exit 0 (1 if some of it could not be written).",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    serve.add_argument(
        "--port",
        type=_port,
        default=9782,
        help="port to listen on; 0 picks a free one (default: %(default)s)",
    )
    serve.add_argument(
        "--token",
        help="bearer token every route but GET /healthz requires (default: "
        "$EVENTLOG_API_TOKEN; without either, no token is asked)",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=10 << 20,
        metavar="N",
        help="largest request body; larger ones get 413 (default: %(default)s, 10 MiB)",
    )
    serve.add_argument(
        "--batch-size", type=_positive_int, default=100, metavar="N", help="(default: 100)"
    )
    serve.add_argument(
        "--debounce-time",
        type=_seconds,
        default=0.1,
        metavar="SECONDS",
        help="longest wait of an entry before its batch is written (default: %(default)s)",
    )
    serve.add_argument(
        "--max-queue",
        type=_non_negative_int,
        default=100_000,
        metavar="N",
        help="entries accepted and not yet written; past it requests get 503 and clients "
        "retry (default: %(default)s; 0: no bound)",
    )
    serve.add_argument(
        "--spool-dir",
        type=Path,
        metavar="FOLDER",
        help="keep every accepted entry on disk until written, so a crash loses none",
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(handler=_serve)

    bench = commands.add_parser(
        "bench",
        help="benchmark eventlog against the alternatives, on PostgreSQL and SQLite",
        description="Write one generated workload of LLM calls with each contender (naive, "
        "SQLAlchemy ORM and Core, chronicle's method, the raw COPY/executemany limit, "
        "eventlog), interleaved, and print medians and ratios. Runs in a PostgreSQL "
        "database and a SQLite file of its own, both removed at the end.",
    )
    bench.add_argument(
        "--pg-url",
        metavar="URL",
        help="PostgreSQL server on this machine to create the bench database on (default: "
        "$EVENTLOG_BENCH_POSTGRES_URL, else postgresql://postgres@127.0.0.1:5432/test)",
    )
    bench.add_argument(
        "--sqlite-path", metavar="PATH", help="new SQLite file (default: a temporary file)"
    )
    bench.add_argument(
        "--backends",
        default="postgresql,sqlite",
        metavar="LIST",
        help="comma-separated, of postgresql and sqlite (default: %(default)s)",
    )
    bench.add_argument(
        "--events", type=_positive_int, metavar="N", help="events per contender (20,000)"
    )
    bench.add_argument("--rounds", type=_positive_int, metavar="R", help="rounds (3)")
    bench.add_argument(
        "--growth-rows",
        type=_non_negative_int,
        metavar="N",
        help="measure throughput again once the table holds N rows (the spec's figure: "
        "1000000, ~3 more minutes); default 0 skips it",
    )
    bench.add_argument("--json", metavar="FILE", help="write every figure to FILE as JSON")
    bench.add_argument(
        "--quick", action="store_true", help="tiny sizes: check that everything runs"
    )
    bench.set_defaults(handler=_bench)

    _add_maintenance_commands(commands, database)
    _add_analytics_commands(commands, database)
    _add_prices_commands(commands, database)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a usage error already printed
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 2
    prog = f"{parser.prog} {args.command}"
    handler: Handler = args.handler
    try:
        url = ""
        if hasattr(args, "url"):  # the commands that open the user's database
            url = default_url() if args.url is None else args.url
            try:
                normalize_url(url)  # a bad URL is bad usage, reported before anything runs
            except ValueError as err:
                raise _UsageError(str(err)) from err
        with _eventlog_log_on_stderr():
            return asyncio.run(handler(args, url))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except _UsageError as err:
        print(f"{prog}: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except (EventLogError, OSError) as err:
        print(f"{prog}: error: {_one_line(str(err)) or repr(err)}", file=sys.stderr)
        return 1


def _one_line(message: str) -> str:
    """``message`` on one line, without SQLAlchemy's documentation link and SQL echo."""
    noise = ("(Background on this error at:", "[SQL:", "[parameters:")
    lines = (line.strip() for line in message.splitlines())
    return " ".join(line for line in lines if line and not line.startswith(noise))


class _OneLineHandler(logging.Handler):
    """Writes records to the *current* ``sys.stderr`` (which rich's progress display
    redirects above itself), one line each and without the traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(_one_line(record.getMessage()), file=sys.stderr)
        except Exception:
            self.handleError(record)


@contextmanager
def _eventlog_log_on_stderr() -> Iterator[None]:
    """Show the logger's own warnings (a batch the database refused) while a command runs.

    Without a handler, Python's last-resort handler would print them with tracebacks.
    """
    logger = logging.getLogger("eventlog")
    handler = _OneLineHandler(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


# -- eventlog demo ------------------------------------------------------------------------


async def _demo(args: argparse.Namespace, url: str) -> int:
    console = Console()
    summary = await run_demo(
        url, args.events, concurrency=args.concurrency, seed=args.seed, console=console
    )
    # End with what `eventlog stats` says of it: the command to ask the same again.
    where = f"environment={summary.environment}"
    console.print(
        f"\n$ eventlog stats --url {url} --since 1h --by model --where {where}",
        highlight=False,
        soft_wrap=True,
    )
    stats_args = argparse.Namespace(
        by=["model"], where=[where], tz=None, bucket="none", since="1h", until=None,
        format="table",
    )  # fmt: skip
    await _stats(stats_args, url)
    console.print(
        f"\nSee it on the dashboard: eventlog serve --url {url}\n"
        f"then open http://127.0.0.1:9782/?since=1h&where={where}",
        highlight=False,
        soft_wrap=True,
    )
    return 1 if summary.failed else 0


# -- eventlog migrate ---------------------------------------------------------------------


def _revision_of(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def _current_revision(db: Database) -> str | None:
    try:
        async with db.engine.connect() as conn:
            return await conn.run_sync(_revision_of)
    except (SQLAlchemyError, OSError) as err:
        raise DatabaseError(f"could not read the schema revision of {db.url}: {err}") from err


async def _migrate(args: argparse.Namespace, url: str) -> int:
    db = await open_database(url)
    try:
        before = await _current_revision(db)
        try:
            if args.downgrade is not None:
                await downgrade(db.engine, args.downgrade)
            else:
                await upgrade(db.engine, args.revision or "head")
        except MigrationError as err:
            if isinstance(err.__cause__, CommandError):  # an unknown or impossible revision
                raise _UsageError(str(err)) from err
            raise
        after = await _current_revision(db)
    finally:
        await db.close()
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()

    def name(revision: str | None) -> str:
        if revision is None:
            return "base (no eventlog tables)"
        return f"{revision} (head)" if revision == head else revision

    if before == after:
        print(f"{db.url}: schema already at {name(after)}; nothing to do.")
    else:
        verb = "downgraded" if args.downgrade is not None else "upgraded"
        print(f"{db.url}: schema {verb} from {name(before)} to {name(after)}.")
    return 0


# -- eventlog dead-letters --------------------------------------------------------------


async def _dead_letters(args: argparse.Namespace, url: str) -> int:
    db = await open_database(url)
    try:
        if args.retry:
            result = await retry_dead_letters(db, limit=args.limit, folder=args.dir)
            print(
                f"retried {result.retried}: written {result.written}, still failing {result.failed}"
            )
            return 1 if result.failed else 0
        letters = await list_dead_letters(db, limit=args.limit)
        total = await count_dead_letters(db)
    finally:
        await db.close()
    in_files: list[StoredDeadLetter] = []
    unreadable = 0
    if args.dir is not None:
        in_files, unreadable = await asyncio.to_thread(list_dead_letter_files, args.dir)
    shown = (letters + in_files)[: args.limit]
    if args.json:
        for letter in shown:
            sys.stdout.write(orjson.dumps(letter.to_json()).decode() + "\n")
        if unreadable:
            print(f"{_count(unreadable, 'unreadable line')} in {args.dir}", file=sys.stderr)
        return 0
    console = Console()
    if shown:
        console.print(_dead_letter_table(shown))
    summary = _count(total, "dead letter")
    if args.dir is not None:
        summary += f" in {db.url}, {len(in_files)} in {args.dir}"
        if unreadable:
            summary += f" (and {_count(unreadable, 'unreadable line')})"
    console.print(summary, highlight=False, soft_wrap=True)
    return 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _dead_letter_table(letters: Sequence[StoredDeadLetter]) -> Table:
    """Two lines a dead letter: time over kind, entry id over batch, so that the error
    (its first line) keeps most of an 80-column terminal."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, leading=1)
    table.add_column("time (UTC)\nkind", no_wrap=True, overflow="ellipsis")
    table.add_column("entry id\nbatch (size)", no_wrap=True, overflow="ellipsis")
    table.add_column("tries", no_wrap=True, justify="right")
    table.add_column("error", ratio=1, overflow="fold")
    for letter in letters:
        lines = letter.error.strip().splitlines()
        error = lines[0] if lines else ""
        if len(error) > 120 or len(lines) > 1:
            error = error[:119] + "\u2026"
        entry_id = "-" if letter.entry_id is None else str(letter.entry_id)
        table.add_row(
            f"{letter.time:%Y-%m-%d %H:%M:%S}\n{letter.kind}",
            f"{entry_id}\n\u2026{letter.batch_id.hex[-12:]} ({letter.batch_size})",
            str(letter.attempts) if letter.file is None else f"{letter.attempts}\n(file)",
            escape(error),
        )
    return table


# -- eventlog serve -----------------------------------------------------------------------


async def _serve(args: argparse.Namespace, url: str) -> int:
    from eventlog import server  # starlette, uvicorn and prometheus-client: only here

    prog = "eventlog serve"
    token = args.token if args.token is not None else os.environ.get(server.TOKEN_ENV) or None
    options: dict[str, Any] = {} if args.spool_dir is None else {"spool_dir": args.spool_dir}
    sock = server.bind_socket(args.host, args.port)  # a port in use: one line, exit 1
    try:
        db = await open_database(url, migrate=True)
        try:
            try:
                app = server.create_app(
                    db=db,
                    token=token,
                    max_body_bytes=args.max_body_bytes,
                    batch_size=args.batch_size,
                    debounce_time=args.debounce_time,
                    max_queue=args.max_queue or None,
                    **options,
                )
            except ValueError as err:
                raise _UsageError(str(err)) from err
            host, port = sock.getsockname()[:2]
            where = f"[{host}]" if ":" in host else host
            auth = "bearer token required" if token else "no token required"
            print(f"{prog}: listening on http://{where}:{port} ({auth}), writing to {db.url}")
            sys.stdout.flush()
            if token is None and not server.is_loopback(args.host):
                print(
                    f"{prog}: warning: no token (--token or ${server.TOKEN_ENV}), and "
                    f"{args.host} is reachable from other machines: anyone there can log",
                    file=sys.stderr,
                )
            try:
                stats = await server.serve(app, sock, access_log=args.access_log)
            except RuntimeError as err:
                print(f"{prog}: error: {err}", file=sys.stderr)
                return 1
        finally:
            await db.close()
    finally:
        sock.close()
    if stats is None:
        print(f"{prog}: error: stopped without writing what was acknowledged", file=sys.stderr)
        return 1
    summary = f"{prog}: stopped; {stats.written} entries written"
    if stats.spooled:
        summary += f", {stats.spooled} kept in the spool for the next start"
    print(summary)
    if stats.failed:
        print(
            f"{prog}: error: {stats.failed} acknowledged entries could not be written "
            "(the database stayed away past the close timeout)",
            file=sys.stderr,
        )
        return 1
    return 0


# -- eventlog bench -----------------------------------------------------------------------


async def _bench(args: argparse.Namespace, _url: str) -> int:
    from eventlog import bench  # maps an ORM class and imports rich tables: only here

    sizes = {
        "events": args.events,
        "rounds": args.rounds,
        "growth_rows": args.growth_rows,
    }
    options: dict[str, Any] = {k: v for k, v in sizes.items() if v is not None}
    options["pg_url"] = args.pg_url or os.environ.get(bench.PG_URL_ENV) or bench.DEFAULT_PG_URL
    options["backends"] = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    if args.sqlite_path is not None:
        options["sqlite_path"] = Path(args.sqlite_path)
    try:
        config = bench.BenchConfig.quick(**options) if args.quick else bench.BenchConfig(**options)
    except ValueError as err:
        raise _UsageError(str(err)) from err
    console = Console()
    report = await bench.run_bench(config, console)
    bench.print_report(report, console)
    if args.json is not None:
        bench.write_json(report, Path(args.json))
        console.print(f"Every figure written to {args.json}.", highlight=False)
    return 1 if report["failures"] else 0


# -- eventlog prune -----------------------------------------------------------------------


def _age(value: str) -> timedelta | datetime:
    try:
        return parse_age(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_maintenance_commands(commands: Any, database: argparse.ArgumentParser) -> None:
    """``prune`` and ``tail``: housekeeping and watching, on an existing database."""
    prune_ = commands.add_parser(
        "prune",
        parents=[database],
        help="delete old events, runs and steps, or clear only their JSON payloads",
        description="Delete chronicle_events rows created before the cutoff, and "
        "chronicle_runs last updated before it with their steps; with "
        "--payloads-older-than, clear chat_request/chat_response of the newer rows "
        "while keeping tokens, latency and the other metric columns. Works in batches, "
        "each its own short transaction, so the writer is never held up for long.",
    )
    prune_.add_argument(
        "--older-than",
        type=_age,
        metavar="AGE",
        help="delete rows older than AGE: 90d, 12h, 30m, 2w, or an ISO date (UTC)",
    )
    prune_.add_argument(
        "--payloads-older-than",
        type=_age,
        metavar="AGE",
        help="clear the request/response JSON of events older than AGE (more recent "
        "than --older-than)",
    )
    prune_.add_argument(
        "--batch-size",
        type=_positive_int,
        default=5000,
        metavar="N",
        help="rows per transaction (default: %(default)s)",
    )
    prune_.add_argument(
        "--dry-run", action="store_true", help="only count what would be deleted or cleared"
    )
    prune_.set_defaults(handler=_prune)

    tail = commands.add_parser(
        "tail",
        parents=[database],
        help="print new events as they are written, until Ctrl-C",
        description="Print chronicle_events rows as they are committed, one line each "
        "(time UTC, type, model, prompt+completion tokens, latency, user, run), or as "
        "JSON lines. On PostgreSQL it wakes on the writer's notifications (LISTEN/NOTIFY) "
        "and reads every 5 s besides; SQLite is polled every 0.5 s. Ctrl-C ends it "
        "with status 0.",
    )
    tail.add_argument("--type", metavar="T", help="only events of type T (event_type)")
    tail.add_argument("--model", metavar="M", help="only calls to model M")
    tail.add_argument(
        "--since",
        type=_age,
        metavar="AGE",
        help="start AGE ago (10m, 1h) or at an ISO time, instead of now",
    )
    tail.add_argument("--json", action="store_true", help="print each event as a JSON object")
    tail.add_argument("--limit", type=_positive_int, metavar="N", help="exit after N events")
    tail.set_defaults(handler=_tail)

    rollup_ = commands.add_parser(
        "rollup",
        parents=[database],
        help="rebuild the rollup from the raw rows",
        description="The rollup tables (eventlog_rollup_hourly, _daily, _users_daily, "
        "_users_hourly, _active_users) sum LLM calls per hour and day; the writer keeps "
        "them up to date. --rebuild recomputes the hours of the window, and the days it "
        "touches, from chronicle_events (after rows were imported or changed by other "
        "means), a UTC day per transaction, holding the writer's increments back while "
        "each day is rebuilt.",
    )
    rollup_.add_argument(
        "--rebuild", action="store_true", required=True, help="recompute the rollup"
    )
    rollup_.add_argument(
        "--since", type=_age, metavar="AGE", help="from AGE ago or an ISO time (default: all)"
    )
    rollup_.add_argument("--until", type=_age, metavar="AGE", help="up to AGE ago or an ISO time")
    rollup_.add_argument("--model", metavar="M", help="only the rows of model M")
    rollup_.set_defaults(handler=_rollup)

    reprice_ = commands.add_parser(
        "reprice",
        parents=[database],
        help="compute the cost of stored calls again with the current prices",
        description="After a price fix (eventlog prices load) or a new bundled price: "
        "recompute cost_usd and price_id of the LLM calls since DATE from their token "
        "columns, and rebuild the rollup of those hours. Costs reported by the provider "
        "are kept.",
    )
    reprice_.add_argument(
        "--since", type=_age, metavar="DATE", required=True, help="an ISO date/time or an AGE (30d)"
    )
    reprice_.add_argument("--until", type=_age, metavar="DATE", help="up to DATE (default: now)")
    reprice_.add_argument("--model", metavar="M", help="only calls to model M")
    reprice_.set_defaults(handler=_reprice)


_PRUNE_OPTIONS = {
    "payloads_older_than": "--payloads-older-than",
    "older_than": "--older-than",
    "batch_size": "--batch-size",
}


async def _prune(args: argparse.Namespace, url: str) -> int:
    if args.older_than is None and args.payloads_older_than is None:
        raise _UsageError("give --older-than, --payloads-older-than, or both")
    db = await open_database(url)
    try:
        result = await prune(
            db,
            older_than=args.older_than,
            payloads_older_than=args.payloads_older_than,
            batch_size=args.batch_size,
            dry_run=args.dry_run,
        )
    except ValueError as err:
        message = str(err)
        for name, option in _PRUNE_OPTIONS.items():
            message = message.replace(name, option)
        raise _UsageError(message) from err
    finally:
        await db.close()
    for line in _prune_report(result, db.url):
        print(line)
    return 0


def _when(value: timedelta | datetime | None) -> datetime | None:
    """An ``_age`` argument as a UTC time."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.now(UTC) - value


async def _rollup(args: argparse.Namespace, url: str) -> int:
    from eventlog.rollup import rebuild

    db = await open_database(url)
    try:
        started = time.monotonic()
        result = await rebuild(
            db, since=_when(args.since), until=_when(args.until), model=args.model
        )
    finally:
        await db.close()
    if result.since is None or result.until is None:
        print(f"{db.url}: no LLM calls and no rollup rows: nothing to rebuild")
        return 0
    print(
        f"{db.url}: rebuilt the rollup of {result.since:%Y-%m-%d %H:00} to "
        f"{result.until:%Y-%m-%d %H:00} UTC"
        + (f" for model {args.model}" if args.model else "")
        + f": {result.rows:,} rows from {result.calls:,} LLM calls "
        f"in {time.monotonic() - started:.2f} s"
    )
    return 0


async def _reprice(args: argparse.Namespace, url: str) -> int:
    from eventlog.reprice import reprice

    db = await open_database(url)
    try:
        try:
            result = await reprice(
                db, since=_when(args.since), until=_when(args.until), model=args.model
            )
        except ValueError as err:
            raise _UsageError(
                str(err).replace("since", "--since").replace("until", "--until")
            ) from err
    finally:
        await db.close()
    print(
        f"{db.url}: repriced {result.since:%Y-%m-%d %H:00} to {result.until:%Y-%m-%d %H:00} UTC"
        + (f" (model {result.model})" if result.model else "")
    )
    print(f"  {result.calls:,} LLM calls looked at")
    print(f"  {result.changed:,} with a new cost ({result.now_priced:,} priced for the first time)")
    print(f"  {result.provider_cost:,} kept the cost their provider reported")
    if result.unpriced:
        models = ", ".join(f"{m} ({n:,})" for m, n in list(result.unpriced_models.items())[:5])
        print(f"  {result.unpriced:,} still unpriced: {models}")
    if result.recounted:
        print(f"  {result.recounted:,} token counts read again from the stored response")
    print(f"  {result.rollup_rows:,} rollup rows rebuilt")
    return 0


def _prune_report(result: PruneResult, url: str) -> list[str]:
    """What a person checks after a retention job: rows per table, against which cutoff."""

    def when(cutoff: datetime | None) -> str:
        return "" if cutoff is None else f"{cutoff:%Y-%m-%d %H:%M:%S} UTC"

    verb, cleared = ("would delete", "would clear") if result.dry_run else ("deleted", "cleared")
    lines: list[str] = []
    if result.older_than is not None:
        before = when(result.older_than)
        lines += [
            f"  chronicle_events  {verb} {result.events_deleted:,} rows created before {before}",
            f"  chronicle_runs    {verb} {result.runs_deleted:,} rows last updated before {before}",
            f"  chronicle_steps   {verb} {result.steps_deleted:,} rows of those runs",
        ]
    if result.payloads_older_than is not None:
        lines.append(
            f"  chronicle_events  {cleared} the payloads of {result.payloads_cleared:,} rows "
            f"created before {when(result.payloads_older_than)}"
        )
    if result.dry_run:
        head = f"{url}: dry run, nothing changed ({result.elapsed:.2f} s):"
    else:
        batches = "1 batch" if result.batches == 1 else f"{result.batches} batches"
        head = (
            f"{url}: pruned in {result.elapsed:.2f} s, {batches} "
            f"(longest {result.longest_batch:.3f} s):"
        )
    return [head, *lines]


# -- eventlog tail ------------------------------------------------------------------------


async def _tail(args: argparse.Namespace, url: str) -> int:
    where = {
        name: value
        for name, value in (("event_type", args.type), ("model", args.model))
        if value is not None
    }
    db = await open_database(url)
    try:
        follower = asyncio.current_task()
        assert follower is not None
        interrupted = False

        def stop() -> None:  # Ctrl-C is how tail is meant to end: status 0, no message
            nonlocal interrupted
            interrupted = True
            follower.cancel()

        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGINT, stop)
            handled = True
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
            handled = False
        try:
            await _print_events(db, where, args.since, args.json, args.limit)
        except asyncio.CancelledError:
            if not interrupted:
                raise
            follower.uncancel()
        finally:
            if handled:
                loop.remove_signal_handler(signal.SIGINT)
    finally:
        await db.close()
    return 0


async def _print_events(
    db: Database,
    where: dict[str, str],
    since: timedelta | datetime | None,
    as_json: bool,
    limit: int | None,
) -> None:
    printed = 0
    events = follow(db, since=since, where=where)
    try:
        async for row in events:
            print(json_dumps(dict(row)) if as_json else _tail_line(row), flush=True)
            printed += 1
            if printed == limit:
                return
    finally:
        await events.aclose()


def _tail_line(row: RowMapping) -> str:
    """One event on one line, the fields a person scans for while watching traffic."""
    time = f"{row['created_at']:%Y-%m-%d %H:%M:%S.%f}"[:-3]
    prompt, completion = row["prompt_tokens"], row["completion_tokens"]
    tokens = "-" if prompt is None and completion is None else f"{prompt or 0}+{completion or 0}"
    latency = row["request_latency_ms"]
    parts = [
        time,
        f"{row['event_type']:<22}",
        f"{row['model'] or '-':<20}",
        f"{tokens:>11} tok",
        f"{'-' if latency is None else latency:>7} ms",
    ]
    user = row["user_id"] or row["request_user_id"]
    if user:
        parts.append(f"user={user}")
    if row["run_id"] is not None:
        parts.append(f"run={row['run_id']}")
    if row["rate_limited"]:
        parts.append("rate-limited")
    if row["error"] is not None:
        parts.append("error")
    return "  ".join(parts)


# -- eventlog stats, runs, run ------------------------------------------------------------


def _add_analytics_commands(commands: Any, database: argparse.ArgumentParser) -> None:
    """``stats``, ``runs`` and ``run``: the analytics of :mod:`eventlog.analytics`."""
    window = argparse.ArgumentParser(add_help=False)
    window.add_argument(
        "--since",
        default="24h",
        metavar="WHEN",
        help="window start: 1h, 24h, 7d, 30d, 90d (any N with m/h/d/w) or an ISO time "
        "(default: %(default)s)",
    )
    window.add_argument("--until", metavar="WHEN", help="window end, as --since (default: now)")
    window.add_argument(
        "--tz",
        metavar="ZONE",
        help="IANA time zone (Europe/Berlin): day, week and month buckets are local days, "
        "and ISO times without an offset are local (default: UTC)",
    )

    stats = commands.add_parser(
        "stats",
        parents=[database, window],
        help="LLM calls: requests, errors, tokens and latency, by group and over time",
        description="Requests, errors, rate limits, retries, tokens, users, output "
        "tokens per second and exact latency percentiles (p95 shown from 20 calls, p99 "
        "from 100) of the LLM calls in the window, per --by group and per --bucket. "
        "--format json is a stable contract: a list of objects with fixed keys, times "
        "in ISO 8601 UTC.",
    )
    stats.add_argument(
        "--by",
        action="append",
        default=[],
        metavar="COLUMN",
        help="group by model, provider, application, environment, organization, project, "
        "user or workflow; repeat or comma-separate for several",
    )
    stats.add_argument(
        "--bucket",
        choices=["auto", "none", "minute", "hour", "day", "week", "month"],
        default="none",
        help="one row per time bucket, empty ones included; auto picks from the window "
        "(default: %(default)s)",
    )
    stats.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only calls with KEY=VALUE: a group name, a chronicle_events column, or "
        "meta.KEY; repeat for several (all must hold)",
    )
    stats.add_argument(
        "--format",
        choices=["table", "csv", "json", "jsonl"],
        default="table",
        help="(default: %(default)s)",
    )
    stats.set_defaults(handler=_stats)

    runs = commands.add_parser(
        "runs",
        parents=[database, window],
        help="workflow runs: recent, slowest or most expensive, with steps and failures",
        description="The runs started in the window, most recent first (or --slowest, "
        "--most-expensive), with duration, step counts, LLM calls and their cost, then "
        "the runs per workflow and status.",
    )
    runs.add_argument("--status", metavar="S", help="only runs in status S (error, finished...)")
    runs.add_argument("--workflow", metavar="W", help="only runs of workflow W (the run's name)")
    order = runs.add_mutually_exclusive_group()
    order.add_argument(
        "--slowest", action="store_true", help="the slowest ended runs first, not the newest"
    )
    order.add_argument(
        "--most-expensive",
        action="store_true",
        help="the runs whose LLM calls cost most first",
    )
    runs.add_argument(
        "--limit", type=_positive_int, default=20, metavar="N", help="(default: %(default)s)"
    )
    runs.add_argument(
        "--format", choices=["table", "json", "jsonl"], default="table", help="(default: table)"
    )
    runs.set_defaults(handler=_runs)

    run = commands.add_parser(
        "run",
        parents=[database],
        help="one run's steps as a timeline",
        description="A run and its steps in start order: offset from the run's start, "
        "duration, status, type and name, with a bar on the run's time line.",
    )
    run.add_argument("run_id", metavar="RUN_ID", help="the run's id (a UUID)")
    run.set_defaults(handler=_run)


def _where_pairs(pairs: Sequence[str]) -> dict[str, str]:
    where: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise _UsageError(f"--where must be KEY=VALUE, got {pair!r}")
        where[key.strip()] = value
    return where


def _zone_arg(name: str | None) -> ZoneInfo | None:
    try:
        return ZoneInfo(name) if name else None
    except (ZoneInfoNotFoundError, ValueError):
        raise _UsageError(
            f"--tz must be an IANA time zone like Europe/Berlin, got {name!r}"
        ) from None


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


async def _stats(args: argparse.Namespace, url: str) -> int:
    by = [name.strip() for option in args.by for name in option.split(",") if name.strip()]
    where = _where_pairs(args.where)
    now = datetime.now(UTC)  # one instant, so that both queries read the same window
    zone = _zone_arg(args.tz)
    bucket: Any = None if args.bucket == "none" else args.bucket
    options: dict[str, Any] = {"by": by, "tz": zone, "where": where, "now": now}
    try:
        since = analytics.parse_time(args.since, "--since", now=now, tz=zone)
        until = analytics.parse_time(args.until, "--until", now=now, tz=zone)
        if bucket == "auto":
            bucket = analytics.auto_bucket(since, until)
        options.update(since=since, until=until, bucket=bucket)
        db = await open_database(url)
        try:
            usage = await analytics.usage(db, **options)
            latency = analytics.latency_for(usage, await analytics.latency(db, **options))
        finally:
            await db.close()
    except ValueError as err:
        raise _UsageError(_option_names(str(err))) from err
    records = analytics.stats_records(usage, latency)
    if args.format == "json":
        sys.stdout.write(orjson.dumps(records, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif args.format == "jsonl":
        for record in records:
            sys.stdout.write(orjson.dumps(record).decode() + "\n")
    elif args.format == "csv":
        flat = [analytics.flat_record(r) for r in records]
        header = list(analytics.flat_record(records[0])) if records else ["start", "end"]
        writer = csv.DictWriter(sys.stdout, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(flat)
    else:
        _print_stats(Console(), usage, latency, by, bucket, zone, since, until)
    return 0


def _option_names(message: str) -> str:
    """An analytics ValueError, with its parameter names spelled as this command's."""
    for name in ("since", "until", "tz", "by", "bucket", "where", "limit"):
        if message.startswith(name):
            return f"--{message}"
    return message


def _print_stats(
    console: Console,
    usage: Sequence[analytics.UsageRow],
    latency: Sequence[analytics.LatencyRow],
    by: Sequence[str],
    bucket: str | None,
    zone: ZoneInfo | None,
    since: datetime,
    until: datetime,
) -> None:
    shown = zone or UTC
    names = list(dict.fromkeys(by))
    # The wide table when the terminal has room for it (its columns are as wide as their
    # widest cells, so long names can need more than 120); else the essential columns
    # (and, with a time column too, no p99 and no year). --format json or csv has them all.
    table = _stats_table(usage, latency, names, bucket, zone, wide=True)
    unbounded = console.options.update_width(1_000_000)
    if console.width < 120 or console.measure(table, options=unbounded).maximum > console.width:
        table = _stats_table(usage, latency, names, bucket, zone, wide=False)
    console.print(table)
    total = sum(use.requests for use in usage)
    cost = sum((use.cost_usd for use in usage), Decimal(0))
    unpriced = sum(use.unpriced_requests for use in usage)
    console.print(
        f"{total:,} LLM calls from {since.astimezone(shown):%Y-%m-%d %H:%M} to "
        f"{until.astimezone(shown):%Y-%m-%d %H:%M} ({'UTC' if zone is None else zone.key}), "
        f"${analytics.usd_text(cost)}{' for the priced calls' if unpriced else ''}; "
        "latency in ms; p95 needs 20 calls and p99 100, '-' below",
        highlight=False,
        soft_wrap=True,
    )
    if unpriced:
        tokens = sum(use.unpriced_tokens for use in usage)
        console.print(
            f"unpriced: {unpriced:,} calls and {tokens:,} tokens have no price and are not "
            "in the cost (load prices with `eventlog prices load`, then `eventlog reprice`)",
            highlight=False,
            soft_wrap=True,
        )
    if any(lat.request.approximate for lat in latency):
        console.print(
            "percentiles from the rollup: each is within 19 % (one histogram bin) "
            "of the exact value",
            highlight=False,
            soft_wrap=True,
        )


def _stats_table(
    usage: Sequence[analytics.UsageRow],
    latency: Sequence[analytics.LatencyRow],
    names: list[str],
    bucket: str | None,
    zone: ZoneInfo | None,
    *,
    wide: bool,
) -> Table:
    """``eventlog stats``' table: every column (``wide``) or the essential ones."""
    shown = zone or UTC
    spec = "%Y-%m-%d" if wide else "%m-%d"
    if bucket in ("minute", "hour"):
        spec += " %H:%M"
    short = not wide and bucket is not None and bool(names)
    headers: list[str] = []
    if bucket is not None:
        headers.append(f"{bucket} ({'UTC' if zone is None else zone.key})")
    headers += names
    headers += ["calls", "errors"]
    headers += ["rate-ltd", "retried"] if wide else []
    headers += ["tokens in", "tokens out"] if wide else ["tok in", "tok out"]
    headers += ["cost $"]
    headers += ["users", "tok/s"] if wide else []
    headers += ["p50 ms", "p95 ms", "p99 ms"] if wide else ["p50", "p95"]
    if not wide and not short:
        headers.append("p99")
    rows: list[list[str]] = []
    for use, lat in zip(usage, latency, strict=True):
        cells = [] if bucket is None else [f"{use.start.astimezone(shown):{spec}}"]
        cells += [escape(str(value)) if value is not None else "-" for value in use.group.values()]
        tps = use.output_tokens_per_second
        errors = f"{use.errors:,}"
        cells += [f"{use.requests:,}", f"{errors} {_percent(use.error_rate)}" if wide else errors]
        if wide:
            cells += [_percent(use.rate_limited_rate), _percent(use.retry_rate)]
        cells += [f"{use.prompt_tokens:,}", f"{use.completion_tokens:,}"]
        cells.append(_cost(use))
        if wide:
            cells += [f"{use.users:,}", "-" if tps is None else f"{tps:,.1f}"]
        cells += [_ms(lat.request.p50), _ms(lat.request.p95)]
        if not short:
            cells.append(_ms(lat.request.p99))
        rows.append(cells)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    texts = (1 if bucket is not None else 0) + len(names)  # left-aligned columns
    for i, header in enumerate(headers):
        # Each column as wide as its widest cell: numbers are never cut short.
        width = max([len(header), *(len(row[i]) for row in rows)])
        table.add_column(
            header, justify="left" if i < texts else "right", no_wrap=True, min_width=width
        )
    for row in rows:
        table.add_row(*row)
    return table


def _cost(use: analytics.UsageRow) -> str:
    """The cost of a row; ``*`` marks a row with unpriced calls (never shown as $0)."""
    if not use.priced_requests:
        return "?" if use.unpriced_requests else "-"
    return analytics.usd_text(use.cost_usd) + ("*" if use.unpriced_requests else "")


def _run_record(run: analytics.RunRow) -> dict[str, Any]:
    return {
        "id": str(run.id),
        "workflow": run.workflow,
        "status": run.status,
        "application": run.application,
        "environment": run.environment,
        "created_at": analytics.iso_utc(run.created_at),
        "updated_at": analytics.iso_utc(run.updated_at),
        "duration_ms": run.duration_ms,
        "steps": run.steps,
        "failed_steps": run.failed_steps,
        "llm_calls": run.llm_calls,
        "cost_usd": format(run.cost_usd, "f"),
        "unpriced_calls": run.unpriced_calls,
    }


def _duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    return f"{ms // 60_000} min {ms % 60_000 / 1000:.0f} s"


async def _runs(args: argparse.Namespace, url: str) -> int:
    zone = _zone_arg(args.tz)
    now = datetime.now(UTC)
    window: dict[str, Any] = {"since": args.since, "until": args.until, "tz": zone, "now": now}
    try:
        db = await open_database(url)
        try:
            listed = await analytics.list_runs(
                db,
                workflow=args.workflow,
                status=args.status,
                order=(
                    "slowest" if args.slowest else "expensive" if args.most_expensive else "recent"
                ),
                limit=args.limit,
                **window,
            )
            counts = await analytics.run_status_counts(db, workflow=args.workflow, **window)
        finally:
            await db.close()
    except ValueError as err:
        raise _UsageError(_option_names(str(err))) from err
    if args.format != "table":
        records = [_run_record(run) for run in listed]
        if args.format == "json":
            sys.stdout.write(orjson.dumps(records, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            for record in records:
                sys.stdout.write(orjson.dumps(record).decode() + "\n")
        return 0
    console = Console()
    shown = zone or UTC
    # Two lines a run, as the dead letters: the id (to pass to `eventlog run`) whole.
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, leading=1)
    table.add_column(f"started ({'UTC' if zone is None else zone.key})\nstatus", no_wrap=True)
    table.add_column("run id\nworkflow", no_wrap=True, min_width=36, overflow="ellipsis")
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("steps", justify="right", no_wrap=True)
    table.add_column("LLM calls\ncost $", justify="right", no_wrap=True)
    for run in listed:
        table.add_row(
            f"{run.created_at.astimezone(shown):%m-%d %H:%M:%S}\n{escape(run.status)}",
            f"{run.id}\n{escape(run.workflow or '-')}",
            _duration(run.duration_ms),
            f"{run.steps}\n{run.failed_steps} failed" if run.failed_steps else str(run.steps),
            f"{run.llm_calls:,}\n{_run_cost(run)}",
        )
    if listed:
        console.print(table)
    by_status: dict[str, int] = {}
    for count in counts:
        if args.status is None or count.status == args.status:
            by_status[count.status] = by_status.get(count.status, 0) + count.runs
    summary = ", ".join(f"{n:,} {status}" for status, n in sorted(by_status.items()))
    total = sum(by_status.values())
    console.print(
        f"{_count(total, 'run')} in the window" + (f": {summary}" if summary else ""),
        highlight=False,
        soft_wrap=True,
    )
    return 0


def _run_cost(run: analytics.RunRow) -> str:
    """A run's cost; ``*`` when some of its calls have no price, ``?`` when none has."""
    if run.llm_calls and run.unpriced_calls == run.llm_calls:
        return "?"
    if not run.llm_calls:
        return "-"
    return analytics.usd_text(run.cost_usd) + ("*" if run.unpriced_calls else "")


_BAR = 32


async def _run(args: argparse.Namespace, url: str) -> int:
    try:
        run_id = uuid.UUID(args.run_id)
    except ValueError:
        raise _UsageError(f"RUN_ID must be a UUID, got {args.run_id!r}") from None
    db = await open_database(url)
    try:
        detail = await analytics.get_run(db, run_id)
    finally:
        await db.close()
    if detail is None:
        print(f"eventlog run: error: no run {run_id} in {db.url}", file=sys.stderr)
        return 1
    run = detail.run
    console = Console()
    console.print(
        f"run {run.id}  {escape(run.workflow or '-')}  {escape(run.status)}  "
        f"started {run.created_at:%Y-%m-%d %H:%M:%S.%f} UTC, {_duration(run.duration_ms)}, "
        f"{_count(run.steps, 'step')} ({run.failed_steps} failed), "
        f"{_count(detail.llm_calls, 'LLM call')}",
        highlight=False,
        soft_wrap=True,
    )
    span = max(
        [run.duration_ms or 0]
        + [(s.offset_ms or 0) + (s.duration_ms or 0) for s in detail.steps]
        + [1]
    )
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("start", justify="right", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("name", overflow="fold")
    table.add_column("timeline", no_wrap=True)
    for step in detail.steps:
        bar = ""
        if step.offset_ms is not None:
            begin = min(_BAR - 1, step.offset_ms * _BAR // span)
            width = max(1, (step.duration_ms or 0) * _BAR // span)
            char = "x" if step.status == "error" else "\u2588"
            bar = " " * begin + char * min(width, _BAR - begin)
        table.add_row(
            "-" if step.offset_ms is None else f"+{_duration(step.offset_ms)}",
            _duration(step.duration_ms),
            escape(step.status),
            escape(step.type or "-"),
            escape(step.name or "-"),
            f"[red]{bar}[/red]" if step.status == "error" else bar,
        )
    if detail.steps:
        console.print(table)
    return 0


# -- eventlog prices ----------------------------------------------------------------------


def _add_prices_commands(commands: Any, database: argparse.ArgumentParser) -> None:
    """``prices load`` and ``prices list``: the user's prices of :mod:`eventlog.prices`."""
    prices = commands.add_parser(
        "prices",
        help="load your own model prices, or list the prices in use",
        description="The USD prices that cost LLM calls: those bundled with eventlog, and "
        "yours in the eventlog_prices table, which come first.",
    )
    actions = prices.add_subparsers(dest="action", metavar="ACTION", required=True)
    load = actions.add_parser(
        "load",
        parents=[database],
        help="store the prices of a .json or .csv file, replacing those of the same id",
        description="Read the prices of FILE (.json or .csv; the formats are described in "
        "the README) and store them in eventlog_prices in one transaction, replacing "
        "stored prices of the same id. Nothing is stored if one is bad.",
    )
    load.add_argument("file", type=Path, metavar="FILE", help="a .json or .csv price file")
    load.set_defaults(handler=_prices_load)
    list_ = actions.add_parser(
        "list",
        parents=[database],
        help="list your prices, then the bundled ones",
        description="List your prices (from eventlog_prices), then the bundled ones: the "
        "first one that fits a call is used. --format csv or json prints them in the form "
        "that `eventlog prices load` reads.",
    )
    list_.add_argument("--model", metavar="M", help="only the prices that could apply to M")
    list_.add_argument(
        "--format", choices=["table", "csv", "json"], default="table", help="(default: table)"
    )
    list_.set_defaults(handler=_prices_list)


async def _prices_load(args: argparse.Namespace, url: str) -> int:
    prices = await asyncio.to_thread(read_price_file, args.file)
    db = await open_database(url)
    try:
        stored = await store_prices(db, prices)
    finally:
        await db.close()
    print(f"loaded {_count(stored, 'price')} from {args.file} into {db.url}")
    return 0


async def _prices_list(args: argparse.Namespace, url: str) -> int:
    if args.model is not None and not args.model.strip():
        raise _UsageError("--model must be a model name, got ''")
    db = await open_database(url)
    try:
        prices = await list_prices(db, model=args.model)
    finally:
        await db.close()
    if args.format == "json":
        records = [price.to_json() for price in prices]
        sys.stdout.write(orjson.dumps(records, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif args.format == "csv":
        rows = price_csv_rows(prices)
        header = [*rows[0]] if rows else ["id"]
        writer = csv.DictWriter(sys.stdout, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        console = Console()
        if prices:
            console.print(_price_table(prices))
        users = sum(price.source == "user" for price in prices)
        console.print(
            f"{_count(users, 'price')} of yours, {len(prices) - users} bundled; USD per "
            "million tokens (request: per call); '-' is priced as input (cache) or output "
            "(reasoning)",
            highlight=False,
            soft_wrap=True,
        )
    return 0


def _price_table(prices: Sequence[Price]) -> Table:
    """Two lines a price, as the dead letters: id over provider and model, so that all
    twelve fields fit a 100-column terminal (--format csv or json has them as columns)."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, leading=1, collapse_padding=True)
    table.add_column("id\nprovider: model or pattern", overflow="fold")
    table.add_column("valid from\nsource", no_wrap=True)
    table.add_column("input\noutput", justify="right", no_wrap=True)
    table.add_column("cache read\ncache write", justify="right", no_wrap=True)
    table.add_column("reasoning\nrequest", justify="right", no_wrap=True)
    table.add_column("tiers\nin/out", overflow="fold")

    def two(first: object, second: object) -> str:
        return "\n".join("-" if value is None else str(value) for value in (first, second))

    def tokens(count: int) -> str:
        return f"{count // 1000:,}k" if count % 1000 == 0 else f"{count:,}"

    for price in prices:
        record = price.to_json()
        name = price.model or str(price.pattern)
        if price.model is None and not any(char in name for char in "*?["):
            name += " (pattern)"
        tiers = "\n".join(
            f"> {tokens(tier.above_input_tokens)}\n{tier.input}/{tier.output}"
            for tier in price.tiers
        )
        table.add_row(
            escape(f"{price.id}\n{price.provider or 'any provider'}: {name}"),
            two(price.valid_from.isoformat(), price.source),
            two(record["input"], record["output"]),
            two(record["cache_read"], record["cache_write"]),
            two(record["reasoning"], None if price.request == 0 else record["request"]),
            tiers or "-",
        )
    return table
