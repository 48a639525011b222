"""The collector's Prometheus metrics: the logger's counters and the HTTP traffic.

Each app has a registry of its own (not ``prometheus_client``'s global one), so several
collectors in one process, or an application that has its own metrics, never clash. The
logger's figures are read from :meth:`~eventlog.LogSender.stats` at scrape time, so they
are exactly what ``GET /healthz`` reports and cost nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from eventlog.stats import DROP_REASONS, LoggerStats

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST


class _LoggerCollector(Collector):
    """The logger's stats as metrics, read when scraped (nothing before it starts)."""

    def __init__(self, stats: Callable[[], LoggerStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if stats is None:
            return
        for name, value, help_text in (
            ("eventlog_events_sent", stats.sent, "Entries accepted into the logger's queue."),
            ("eventlog_events_written", stats.written, "Entries committed to the database."),
            (
                "eventlog_events_failed",
                stats.failed,
                "Entries not written and not set aside (the database stayed away).",
            ),
            (
                "eventlog_events_dead_letters",
                stats.dead_letters,
                "Entries refused by the database and set aside as dead letters.",
            ),
            ("eventlog_events_replayed", stats.replayed, "Entries replayed from the spool."),
            ("eventlog_batches", stats.batches, "Batches committed."),
            ("eventlog_write_retries", stats.retries, "Batch writes retried after a failure."),
        ):
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], value)
            yield counter
        dropped = CounterMetricFamily(
            "eventlog_events_dropped", "Entries the logger dropped, by reason.", labels=["reason"]
        )
        for reason in DROP_REASONS:
            dropped.add_metric([reason], stats.dropped_by_reason.get(reason, 0))
        yield dropped
        gauges: tuple[tuple[str, float, str], ...] = (
            ("eventlog_queue_depth", stats.queued, "Entries accepted and not yet written."),
            ("eventlog_spooled", stats.spooled, "Entries in the spool waiting for the database."),
            (
                "eventlog_oldest_queued_age_seconds",
                stats.oldest_queued_age or 0.0,
                "Age of the oldest entry not yet written (0 when none waits).",
            ),
        )
        for gauge_name, amount, gauge_help in gauges:
            gauge = GaugeMetricFamily(gauge_name, gauge_help)
            gauge.add_metric([], amount)
            yield gauge


class Metrics:
    """One collector's metrics; :meth:`render` is the body of ``GET /metrics``."""

    def __init__(self, stats: Callable[[], LoggerStats | None]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_LoggerCollector(stats))
        self._requests = Counter(
            "eventlog_http_requests",
            "HTTP requests answered, by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "eventlog_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route.",
            ["route"],
            registry=self.registry,
        )

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self._requests.labels(route, str(status)).inc()
        self._duration.labels(route).observe(seconds)

    def render(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)
