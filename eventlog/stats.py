"""A snapshot of what a logger has done, for health checks and tests."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LoggerStats"]


@dataclass(frozen=True, slots=True)
class LoggerStats:
    """Counters of one logger, read at one instant.

    ``sent`` counts entries accepted by ``send()``; ``written`` entries whose batch was
    committed; ``batches`` committed batches; ``failed_writes`` batches the database
    refused and ``failed`` the entries in them; ``dropped`` entries refused because the
    logger was closed (not counted in ``sent``); ``queued`` entries accepted and neither
    written nor failed yet, so ``sent == written + failed + queued``.
    ``transient_failures`` counts write attempts that failed because the database was
    away or busy, and ``retries`` the attempts made again after one. ``repaired`` counts
    written entries that had a value repaired (see :mod:`eventlog.sanitize`).
    """

    sent: int = 0
    written: int = 0
    batches: int = 0
    failed_writes: int = 0
    failed: int = 0
    dropped: int = 0
    queued: int = 0
    retries: int = 0
    transient_failures: int = 0
    repaired: int = 0
