"""SVG charts drawn on the server: bar and line charts over time buckets, and timelines.

The dashboard (:mod:`eventlog.page`) draws its charts here as inline SVG, so the page
needs no script, no chart library and no other host, and works offline. The drawings
carry CSS classes (``grid``, ``axis``, ``bar``, ``line``, ``hit``, ...) that the page's
stylesheet styles; a tooltip is an SVG ``<title>``. Every text is escaped here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from html import escape
from typing import Final, Literal

__all__ = [
    "OTHER_COLOR",
    "PALETTE",
    "Axis",
    "Series",
    "TimelineRow",
    "chart",
    "time_axis",
    "timeline",
]

PALETTE: Final = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#9c755f",
)
"""The colors of a chart's series, in the order they are handed out."""

OTHER_COLOR: Final = "#b8bec6"
"""The color of the series that sums the groups past the palette ("other")."""


# -- axes ---------------------------------------------------------------------------------


def _nice_ticks(high: float, count: int = 4, *, integer: bool = False) -> list[float]:
    """Ticks from 0 to at least ``high``: about ``count`` steps of 1, 2, 2.5 or 5 times a
    power of ten (whole numbers only with ``integer``)."""
    if not high > 0 or not math.isfinite(high):
        high = 1.0
    raw = high / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = 10 * magnitude
    for factor in (1, 2, 2.5, 5, 10):
        candidate = factor * magnitude
        if integer and candidate != int(candidate):
            continue
        if candidate >= raw:
            step = candidate
            break
    if integer:
        step = max(1.0, step)
    steps = math.ceil(high / step - 1e-9)
    return [float(f"{i * step:.12g}") for i in range(steps + 1)]


@dataclass(frozen=True, slots=True)
class Series:
    """One line or stack of a chart: a value (or None) per bucket."""

    name: str
    values: Sequence[float | None]
    color: str


@dataclass(frozen=True, slots=True)
class Axis:
    """The buckets along x: a tick label (two lines, or None for no tick) and a
    description for the tooltip, per bucket."""

    ticks: Sequence[tuple[str, str] | None]
    titles: Sequence[str]


_STEPS: Final[Mapping[str, tuple[int, ...]]] = {
    "minute": (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440),
    "hour": (1, 2, 3, 6, 12, 24, 48, 72, 168, 336),
    "day": (1, 2, 7, 14, 28, 56, 91, 182),
    "week": (1, 2, 4, 8, 13, 26, 52, 104),
    "month": (1, 2, 3, 6, 12, 24, 60),
}
_MAX_TICKS: Final = 8


def _unit(local: datetime, bucket: str) -> int:
    """A count of ``bucket`` units for a local time, to place ticks on round times."""
    naive = local.replace(tzinfo=None)
    if bucket == "minute":
        return int((naive - datetime(1970, 1, 1)) // timedelta(minutes=1))
    if bucket == "hour":
        return int((naive - datetime(1970, 1, 1)) // timedelta(hours=1))
    days = (naive.date() - date(1970, 1, 1)).days
    if bucket == "day":
        return days + 3  # multiples of 7 fall on Mondays
    if bucket == "week":
        return (days + 3) // 7
    return naive.year * 12 + naive.month - 1


def _whole(start: datetime, local: datetime, bucket: str) -> bool:
    """Whether a bucket starts on its boundary (the first one is cut at the window's
    start). Minute and hour buckets are UTC's, longer ones local."""
    if bucket == "minute":
        return start.second == 0 and start.microsecond == 0
    if bucket == "hour":
        return start.minute == 0 and start.second == 0 and start.microsecond == 0
    midnight = local.hour == local.minute == local.second == local.microsecond == 0
    if bucket == "week":
        return midnight and local.weekday() == 0
    if bucket == "month":
        return midnight and local.day == 1
    return midnight


def time_axis(
    starts: Sequence[datetime], ends: Sequence[datetime], bucket: str, zone: tzinfo
) -> Axis:
    """The x axis of buckets from ``starts`` to ``ends`` (``bucket``: minute, hour, day,
    week or month): at most about eight ticks on round times, shown in ``zone``."""
    n = len(starts)
    step = next((s for s in _STEPS[bucket] if math.ceil(n / s) <= _MAX_TICKS), _STEPS[bucket][-1])
    local = [at.astimezone(zone) for at in starts]
    marked = [
        i
        for i, at in enumerate(local)
        if _unit(at, bucket) % step == 0 and _whole(starts[i], at, bucket)
    ]
    if not marked and n:
        marked = [0]
    ticks: list[tuple[str, str] | None] = [None] * n
    previous: datetime | None = None
    for i in marked:
        at = local[i]
        if bucket in ("minute", "hour"):
            context = f"{at:%b} {at.day}"
            new = previous is None or previous.date() != at.date()
            ticks[i] = (f"{at:%H:%M}", context if new else "")
        elif bucket in ("day", "week"):
            new = previous is None or previous.year != at.year
            ticks[i] = (f"{at:%b} {at.day}", f"{at:%Y}" if new else "")
        else:
            new = previous is None or previous.year != at.year
            ticks[i] = (f"{at:%b}", f"{at:%Y}" if new else "")
        previous = at
    titles = []
    for start, end in zip(local, ends, strict=True):
        end_local = end.astimezone(zone)
        if bucket in ("minute", "hour"):
            titles.append(f"{start:%a %b} {start.day}, {start:%H:%M}\N{EN DASH}{end_local:%H:%M}")
        elif bucket == "day":
            titles.append(f"{start:%a %b} {start.day}, {start:%Y}")
        elif bucket == "week":
            titles.append(f"week from {start:%a %b} {start.day}, {start:%Y}")
        else:
            titles.append(f"{start:%B %Y}")
    return Axis(ticks, titles)


# -- charts over time ---------------------------------------------------------------------

_WIDTH: Final = 640
_PLOT_HEIGHT: Final = 170
_TOP: Final = 12
_CHAR: Final = 6.4  # average width of an 11px character


def _fmt_number(value: float) -> str:
    """A coordinate with at most one decimal: ``12``, ``12.5``."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _legend(series: Sequence[Series], x0: float, x1: float, y: float) -> tuple[str, float]:
    """The series' keys in rows from ``(x0, y)``, wrapped at ``x1``; and their height."""
    parts: list[str] = []
    x, row = x0, 0
    for s in series:
        shown = s.name if len(s.name) <= 28 else s.name[:27] + "…"
        width = 12 + 5 + len(shown) * _CHAR + 16
        if x + width > x1 and x > x0:
            x, row = x0, row + 1
        top = y + row * 18
        parts.append(
            f'<g class="key"><title>{escape(s.name)}</title>'
            f'<rect x="{_fmt_number(x)}" y="{_fmt_number(top)}" width="12" height="12" rx="2" '
            f'fill="{s.color}"/><text x="{_fmt_number(x + 17)}" y="{_fmt_number(top + 10)}">'
            f"{escape(shown)}</text></g>"
        )
        x += width
    height = (row + 1) * 18 if series else 0
    return "".join(parts), height


def chart(
    kind: Literal["bar", "line"],
    *,
    title: str,
    axis: Axis,
    series: Sequence[Series],
    fmt: Callable[[float], str],
    tick_fmt: Callable[[float], str],
    integer: bool = False,
    empty: str = "No data in this window",
    tooltip_extra: Sequence[str] | None = None,
) -> str:
    """An SVG chart over time buckets: stacked bars or one line per series, with a y axis
    of nice ticks, time ticks, a legend, and a tooltip per bucket (its title)."""
    n = len(axis.titles)
    if kind == "bar":
        peak = max(
            (sum(v for s in series if (v := s.values[i]) is not None) for i in range(n)),
            default=0.0,
        )
    else:
        peak = max((v for s in series for v in s.values if v is not None), default=0.0)
    has_data = any(v is not None and (kind == "line" or v > 0) for s in series for v in s.values)
    # No data: a bare frame with the message, no made-up scale and no legend.
    ticks = _nice_ticks(peak, 4, integer=integer) if has_data else [0.0, 1.0]
    labels = [tick_fmt(t) if has_data else "" for t in ticks]
    top_value = ticks[-1]
    left = 14 + max(max(len(label) for label in labels), 2) * _CHAR
    x0, x1 = left, _WIDTH - 10.0
    y0, y1 = float(_TOP), float(_TOP + _PLOT_HEIGHT)
    band = (x1 - x0) / max(n, 1)

    def y_of(value: float) -> float:
        return y1 - (value / top_value) * (y1 - y0)

    parts: list[str] = []
    for t, label in zip(ticks, labels, strict=True):
        y = y_of(t)
        parts.append(
            f'<line class="grid" x1="{_fmt_number(x0)}" x2="{_fmt_number(x1)}" '
            f'y1="{_fmt_number(y)}" y2="{_fmt_number(y)}"/>'
            f'<text class="ytick" x="{_fmt_number(x0 - 6)}" y="{_fmt_number(y + 4)}" '
            f'text-anchor="end">{escape(label)}</text>'
        )
    for i, tick in enumerate(axis.ticks):
        if tick is None:
            continue
        x = x0 + band * (i + 0.5)
        # The label centred on its tick, moved in where it would leave the chart.
        half = max(len(tick[0]), len(tick[1])) * _CHAR / 2
        tx = min(max(x, half + 2), _WIDTH - half - 2)
        parts.append(
            f'<line class="tick" x1="{_fmt_number(x)}" x2="{_fmt_number(x)}" '
            f'y1="{_fmt_number(y1)}" y2="{_fmt_number(y1 + 4)}"/>'
            f'<text class="xtick" x="{_fmt_number(tx)}" y="{_fmt_number(y1 + 16)}" '
            f'text-anchor="middle">{escape(tick[0])}'
            + (f'<tspan x="{_fmt_number(tx)}" dy="13">{escape(tick[1])}</tspan>' if tick[1] else "")
            + "</text>"
        )
    if has_data and kind == "bar":
        width = max(band * 0.78, 0.6)
        for i in range(n):
            base = 0.0
            x = x0 + band * i + (band - width) / 2
            for s in series:
                v = s.values[i]
                if not v:
                    continue
                top, bottom = y_of(base + v), y_of(base)
                parts.append(
                    f'<rect class="bar" x="{_fmt_number(x)}" y="{_fmt_number(top)}" '
                    f'width="{_fmt_number(width)}" height="{_fmt_number(max(bottom - top, 0.5))}" '
                    f'fill="{s.color}"/>'
                )
                base += v
    elif has_data:
        dots = n <= 60
        for s in series:
            run: list[tuple[float, float]] = []
            runs: list[list[tuple[float, float]]] = []
            for i, v in enumerate(s.values):
                if v is None:
                    if run:
                        runs.append(run)
                    run = []
                    continue
                run.append((x0 + band * (i + 0.5), y_of(v)))
            if run:
                runs.append(run)
            for points in runs:
                if len(points) > 1:
                    coords = " ".join(f"{_fmt_number(x)},{_fmt_number(y)}" for x, y in points)
                    parts.append(f'<polyline class="line" points="{coords}" stroke="{s.color}"/>')
                if dots or len(points) == 1:
                    parts += [
                        f'<circle cx="{_fmt_number(x)}" cy="{_fmt_number(y)}" r="2.6" '
                        f'fill="{s.color}"/>'
                        for x, y in points
                    ]
    parts.append(
        f'<line class="axis" x1="{_fmt_number(x0)}" x2="{_fmt_number(x1)}" '
        f'y1="{_fmt_number(y1)}" y2="{_fmt_number(y1)}"/>'
    )
    if not has_data:
        parts.append(
            f'<text class="nodata" x="{_fmt_number((x0 + x1) / 2)}" '
            f'y="{_fmt_number((y0 + y1) / 2)}" text-anchor="middle">{escape(empty)}</text>'
        )
    else:
        for i in range(n):
            lines = [axis.titles[i]]
            for s in series:
                v = s.values[i]
                if v is not None and (kind == "line" or v):
                    lines.append(f"{s.name}: {fmt(v)}")
            if tooltip_extra is not None and tooltip_extra[i]:
                lines.append(tooltip_extra[i])
            if len(lines) == 1:
                lines.append("none")
            parts.append(
                f'<rect class="hit" x="{_fmt_number(x0 + band * i)}" y="{_fmt_number(y0)}" '
                f'width="{_fmt_number(band)}" height="{_fmt_number(y1 - y0)}">'
                f"<title>{escape(chr(10).join(lines))}</title></rect>"
            )
    legend, legend_height = _legend(series if has_data else [], x0, x1, y1 + 38)
    height = y1 + 38 + legend_height + 4
    return (
        f'<svg class="chart" viewBox="0 0 {_WIDTH} {_fmt_number(height)}" '
        f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>{''.join(parts)}{legend}</svg>"
    )


# -- timelines ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """One row of a timeline: a label, and a bar from ``start`` for ``length`` (None:
    no end, drawn dashed to the timeline's end) in the units of the ticks."""

    label: str
    start: float
    length: float | None
    text: str  # shown next to the bar (or in it, where it does not fit after it)
    tip: str  # the row's tooltip
    color: str
    css_class: str  # the CSS classes of the row's group
    indent: int = 0  # the label's indent, in levels


def timeline(rows: Sequence[TimelineRow], *, title: str, tick_fmt: Callable[[float], str]) -> str:
    """An SVG timeline: one horizontal bar per row from a common start, under ticks of
    the offset from that start (``tick_fmt`` formats one); ``title`` is its aria-label."""
    span = max([1] + [row.start + (row.length or 0) for row in rows])
    width, label_width, right = 980.0, 230.0, 16.0
    x0, x1 = label_width, width - right
    row_height, bar_height, top = 26.0, 14.0, 30.0
    ticks = _nice_ticks(float(span), 6)
    scale = (x1 - x0) / ticks[-1]
    parts: list[str] = []
    height = top + row_height * len(rows) + 8
    for t in ticks:
        x = x0 + t * scale
        parts.append(
            f'<line class="grid" x1="{_fmt_number(x)}" x2="{_fmt_number(x)}" y1="{top - 6}" '
            f'y2="{_fmt_number(height - 4)}"/><text x="{_fmt_number(x)}" y="{top - 12}" '
            f'text-anchor="middle">{escape("+" + tick_fmt(t) if t else "0")}</text>'
        )
    for i, row in enumerate(rows):
        y = top + row_height * i
        indent, start, length, text = row.indent, row.start, row.length, row.text
        label = row.label
        shown = label if len(label) <= 34 - 2 * indent else label[: 33 - 2 * indent] + "…"
        bx = x0 + start * scale
        open_ended = length is None
        bw = max((span - start if length is None else length) * scale, 2.0)
        dash = ' stroke-dasharray="4 3" fill-opacity="0.35"' if open_ended else ""
        if bx + bw + 8 + len(text) * _CHAR < width:
            dur = (
                f'<text class="dur" x="{_fmt_number(bx + bw + 5)}" y="{_fmt_number(y + 15)}">'
                f"{escape(text)}</text>"
            )
        elif bw > len(text) * _CHAR + 10:
            dur = (
                f'<text class="dur{"" if open_ended else " inbar"}" '
                f'x="{_fmt_number(bx + bw - 5)}" y="{_fmt_number(y + 15)}" '
                f'text-anchor="end">{escape(text)}</text>'
            )
        else:
            dur = ""
        parts.append(
            f'<g class="{escape(row.css_class)}"><title>{escape(row.tip)}</title>'
            f'<text class="label" x="{_fmt_number(8 + 12 * indent)}" '
            f'y="{_fmt_number(y + 15)}">{escape(shown)}</text>'
            f'<rect class="span" x="{_fmt_number(bx)}" y="{_fmt_number(y + 4)}" '
            f'width="{_fmt_number(bw)}" height="{bar_height}" rx="2" fill="{row.color}" '
            f'stroke="{row.color}"{dash}/>{dur}</g>'
        )
    return (
        f'<svg class="timeline" viewBox="0 0 {_fmt_number(width)} {_fmt_number(height)}" '
        f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f"{''.join(parts)}</svg>"
    )
