"""A snapshot of what a logger has done, for health checks and tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["DROP_REASONS", "LoggerStats"]

DROP_REASONS = ("closed", "queue_full", "evicted", "recursion")
"""Why entries are dropped: ``send()`` after ``close()``; the queue at ``max_queue`` with
``overflow="drop_newest"`` (or ``"block"`` when a blocked sender is released by close);
the oldest queued entries pushed out by ``overflow="drop_oldest"``; and an entry sent
from inside eventlog's own logging (an application that routes stdlib logging into
eventlog would otherwise make eventlog's warnings loop)."""


@dataclass(frozen=True, slots=True)
class LoggerStats:
    """Counters of one logger, read at one instant.

    ``sent`` counts entries accepted by ``send()`` and ``replayed`` those read back from
    a previous run's spool; each of them ends as exactly one of ``written`` (its batch
    committed), ``dead_letters`` (refused by the database and set aside, see
    ``eventlog dead-letters``), ``failed`` (not written and not set aside: the database
    stayed away past the close deadline, or the writer was cancelled), ``dropped`` with
    reason ``"evicted"``, or is still ``queued``: so ``sent + replayed == written +
    dead_letters + failed + dropped_by_reason["evicted"] + queued``. Other drops
    (``dropped_by_reason``) are entries ``send()`` refused, not counted in ``sent``.

    ``batches`` counts committed batches, ``failed_writes`` batches that were not
    written (a refused batch is split to find its bad entries; see ``dead_letters``).
    ``transient_failures`` counts write attempts that failed because the database was
    away or busy, and ``retries`` the attempts made again after one. ``repaired`` counts
    written entries that had a value repaired (see :mod:`eventlog.sanitize`).

    ``queued_bytes`` is the JSON size of the queued entries, kept only with
    ``max_queue_bytes``. With a spool, ``spooled`` is how many entries are in the spool
    waiting for the database (after ``aclose()`` they stay there for the next start, and are not
    ``failed``), and ``spool_corrupt`` counts torn or damaged records skipped on reading
    it. ``oldest_queued_age`` is the age in seconds of the oldest entry not yet written
    (None when none is waiting); ``write_latency_*`` are seconds from a batch's first
    write attempt to its commit: the last one, and the median and 99th percentile of
    the last 1,000.
    """

    sent: int = 0
    written: int = 0
    batches: int = 0
    failed_writes: int = 0
    failed: int = 0
    dropped: int = 0
    queued: int = 0
    queued_bytes: int = 0
    retries: int = 0
    transient_failures: int = 0
    repaired: int = 0
    dead_letters: int = 0
    dropped_by_reason: Mapping[str, int] = field(default_factory=dict)
    replayed: int = 0
    spooled: int = 0
    spool_corrupt: int = 0
    oldest_queued_age: float | None = None
    write_latency_last: float | None = None
    write_latency_p50: float | None = None
    write_latency_p99: float | None = None
