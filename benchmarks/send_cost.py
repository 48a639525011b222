"""What ``send()`` costs the caller with each memory option, side by side in one run.

``python benchmarks/send_cost.py``: 50,000 LLM calls of about 2.7 KB (built before timing)
are sent to a logger on an in-memory database, timed per 1,000 sends; the median
microseconds per ``send()`` are printed for an unbounded queue, ``max_queue``,
``max_queue_bytes`` (which measures each entry as JSON) and ``spool_dir`` (whose disk
work runs off the caller's path), two rounds each, plus how long the logger takes to
drain after the last send. A measurement, not a test: the machine is shared and noisy.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from typing import Any

from eventlog import ProxyLogEvent, start_database_logger
from eventlog.testing import MemoryDatabase

EVENTS = 50_000
CHUNK = 1_000


async def run(label: str, **options: Any) -> None:
    db = MemoryDatabase()
    sender, _ = start_database_logger(db, batch_size=1000, debounce_time=0.05, **options)
    events = [
        ProxyLogEvent(
            model="gpt-4o",
            request={"messages": [{"role": "user", "content": "x" * 1000}]},
            response={"content": "y" * 800, "usage": {"prompt_tokens": 250}},
        )
        for _ in range(EVENTS)
    ]
    per_send = []
    for chunk in range(EVENTS // CHUNK):
        started = time.perf_counter_ns()
        for event in events[chunk * CHUNK : (chunk + 1) * CHUNK]:
            sender.send(event)
        per_send.append((time.perf_counter_ns() - started) / CHUNK / 1000)
        await asyncio.sleep(0)  # let the writer (and the spool) run between chunks
    started = time.perf_counter()
    stats = await sender.aclose()
    print(
        f"{label:24s} send() median {statistics.median(per_send):5.2f} us; "
        f"drained {time.perf_counter() - started:5.2f} s after the last send; "
        f"written {stats.written:,}"
    )


async def main() -> None:
    for _ in range(2):
        await run("unbounded")
        await run("max_queue=1,000,000", max_queue=1_000_000)
        await run("max_queue_bytes=10 GB", max_queue_bytes=10**10)
        with tempfile.TemporaryDirectory() as folder:
            await run("spool_dir", spool_dir=folder)


if __name__ == "__main__":
    asyncio.run(main())
