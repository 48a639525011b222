"""The ``eventlog`` command: ``demo``, ``migrate``, ``dead-letters``, ``serve``, ``bench``,
``--version``.

Exit status: 0 done; 1 the database failed (or refused entries); 2 bad usage (arguments,
database URL, migration revision); 130 interrupted with Ctrl-C. The expected failures
print one line on stderr, never a traceback: a person at a terminal needs the cause, and
the traceback of a refused connection says nothing more.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from eventlog import __version__
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
from eventlog.migrate import alembic_config, downgrade, upgrade

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
    summary = await run_demo(
        url, args.events, concurrency=args.concurrency, seed=args.seed, console=Console()
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
