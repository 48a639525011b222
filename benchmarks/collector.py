"""How many events per second one ``eventlog serve`` process takes and commits.

``python benchmarks/collector.py [--backends postgresql,sqlite] [--events N]``

For each backend: a new database (on PostgreSQL, created on the server at ``--pg-url``
and dropped after; on SQLite, a temporary file), one ``eventlog serve`` process on a free
loopback port with its default settings, and one client in this process posting the
bench's realistic LLM calls (about 2.6 KB each, serialised before any timing) to
``POST /events`` in batches of 100 from ``--concurrency`` connections at once.

Two figures per backend:

- *acknowledged*: plain posts (``202`` once queued); the rate is events over the time
  from the first post until the database holds them all (the collector's own
  ``/healthz`` counts them), so it is what is committed, not only queued;
- *wait=true*: each post waits for its commit (``201``).

The client shares the machine with the collector and the database, as it would on a
single host; it is not a test and asserts no speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson

from eventlog.bench import DEFAULT_PG_URL, PG_URL_ENV, _postgres_database, _sqlite_file, _Workload
from eventlog.parse import entry_to_wire

EVENTLOG = str(Path(sys.executable).parent / "eventlog")


def bodies(count: int, batch: int, seed: int) -> list[bytes]:
    """``count`` events as ``{"events": [...]}`` bodies of ``batch`` events."""
    workload = _Workload(seed)
    wire = [entry_to_wire(workload.event()) for _ in range(count)]
    return [orjson.dumps({"events": wire[i : i + batch]}) for i in range(0, count, batch)]


@contextlib.asynccontextmanager
async def collector(url: str) -> AsyncIterator[str]:
    """``eventlog serve`` on a free loopback port; yields its base URL, stops it after."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLOG_")}
    process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
        [EVENTLOG, "serve", "--url", url, "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 120)
        if "listening on " not in line:
            raise RuntimeError(f"eventlog serve did not start: {line!r}")
        yield line.split("listening on ")[1].split()[0]
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 120)


async def post_all(
    http: httpx.AsyncClient, payloads: Sequence[bytes], concurrency: int, wait: bool
) -> None:
    queue: Iterator[bytes] = iter(payloads)
    path = "/events?wait=true" if wait else "/events"
    headers = {"content-type": "application/json"}

    async def worker() -> None:
        for body in queue:  # one shared iterator: each body is posted once
            while True:
                answer = await http.post(path, content=body, headers=headers)
                if answer.status_code in (201, 202):
                    break
                if answer.status_code != 503:  # 503: queue full, retry as a client should
                    raise RuntimeError(f"{answer.status_code}: {answer.text[:200]}")
                await asyncio.sleep(float(answer.headers.get("retry-after", "1")))

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def written(http: httpx.AsyncClient) -> int:
    return int((await http.get("/healthz")).json()["logger"]["written"])


async def measure(url: str, payloads: Sequence[bytes], events: int, args: Any) -> dict[str, float]:
    result: dict[str, float] = {}
    async with collector(url) as base:
        limits = httpx.Limits(max_connections=args.concurrency)
        async with httpx.AsyncClient(
            base_url=base, timeout=120, limits=limits, trust_env=False
        ) as http:
            await post_all(http, payloads[:2], 1, wait=True)  # warm up: connections, caches
            for mode in ("acknowledged", "wait=true"):
                before = await written(http)
                started = time.perf_counter()
                await post_all(http, payloads, args.concurrency, wait=mode == "wait=true")
                posted = time.perf_counter()
                while await written(http) < before + events:  # noqa: ASYNC110 - another process
                    await asyncio.sleep(0.01)  # a benchmark may poll; tests do not
                done = time.perf_counter()
                result[mode] = events / (done - started)
                if mode == "acknowledged":
                    result["acknowledged: posting only"] = events / (posted - started)
    return result


@contextlib.asynccontextmanager
async def database(backend: str, pg_url: str) -> AsyncIterator[str]:
    if backend == "postgresql":
        async with _postgres_database(pg_url) as url:
            yield url.render_as_string(hide_password=False)
    else:
        async with _sqlite_file(None) as url:
            yield f"sqlite:///{url.database}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pg-url", default=os.environ.get(PG_URL_ENV) or DEFAULT_PG_URL)
    args = parser.parse_args()
    payloads = bodies(args.events, args.batch, seed=1)
    size = sum(map(len, payloads)) / args.events
    print(
        f"{args.events} events of {size:.0f} bytes on the wire, {args.batch} a request, "
        f"{args.concurrency} connections, one `eventlog serve` with its defaults, "
        f"{os.cpu_count()} CPUs"
    )
    for backend in args.backends.split(","):
        async with database(backend, args.pg_url) as url:
            figures = await measure(url, payloads, args.events, args)
        for mode, rate in figures.items():
            print(f"{backend:<11} {mode:<27} {rate:>8,.0f} events/s")


if __name__ == "__main__":
    asyncio.run(main())
