"""Server-side SVG charts of the dashboard: traffic over time (stacked bars,
lines), an account's score over time and its detectors' evidence. Plain strings, every text escaped; styled by the
dashboard's CSS through classes (no inline styles, so a strict CSP holds)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape

from ..detectors import registry

#: Evaluations drawn in a timeline: more are thinned evenly, keeping where the flag changes.
MAX_POINTS = 400
#: Evidence drawn at most, as a multiple of a detector's threshold.
MAX_EVIDENCE = 10.0


@dataclass(frozen=True)
class Point:
    """One evaluation on the timeline: when (epoch seconds) and its score."""

    at: float
    score: float
    flagged: bool
    note: str = ""


def evidence(scores: Mapping[str, Any], prada_threshold: float) -> list[tuple[str, float | None]]:
    """Each detector's label and evidence in one evaluation, its score over its
    own threshold (1 is "at the threshold"); None when it gave no verdict. The
    detectors and their labels are :mod:`~flask_modelguard.detectors.registry`'s."""
    return [(e.label, e.ratio) for e in registry.evidence(scores, prada_threshold)]


def _thin(points: Sequence[Point]) -> list[Point]:
    if len(points) <= MAX_POINTS:
        return list(points)
    step = math.ceil(len(points) / MAX_POINTS)
    changes = {n for n in range(1, len(points)) if points[n].flagged != points[n - 1].flagged}
    return [p for n, p in enumerate(points) if n % step == 0 or n in changes or n == len(points) - 1]


def _text(x: float, y: float, text: str, cls: str, anchor: str = "start") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" class="{cls}" text-anchor="{anchor}">{escape(text)}</text>'


def breakdown(items: Sequence[tuple[str, float | None]], width: int = 640) -> Markup:
    """Horizontal bars of each detector's evidence, with its threshold at 1;
    a detector without a verdict is labelled so instead of drawn as 0."""
    label_w, value_w, row = 130, 70, 26
    plot_w = width - label_w - value_w
    top = max([v for _, v in items if v is not None] + [2.0])
    scale = min(MAX_EVIDENCE, math.ceil(top))
    height = row * len(items) + 24

    def x(v: float) -> float:
        return label_w + plot_w * min(v, scale) / scale

    parts = [(f'<svg class="chart breakdown" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
              f'role="img" aria-label="Detector evidence over threshold">')]
    for n, (name, value) in enumerate(items):
        y0 = n * row + 4
        parts.append(_text(label_w - 8, y0 + 15, name, "label", "end"))
        if value is None:
            parts.append(_text(label_w + 4, y0 + 15, "no verdict yet", "muted"))
            continue
        cls = "bar over" if value >= 1.0 else "bar"
        parts.append(f'<rect class="{cls}" x="{label_w}" y="{y0 + 3}" width="{max(0.0, x(value) - label_w):.1f}" '
                     f'height="{row - 8}"><title>{escape(f"{name}: {value:.2f} × threshold")}</title></rect>')
        shown = f"{value:.2f}×" + ("+" if value > scale else "")
        parts.append(_text(width - value_w + 6, y0 + 15, shown, "value"))
    bottom = row * len(items) + 4
    parts.append(f'<line class="threshold" x1="{x(1.0):.1f}" x2="{x(1.0):.1f}" y1="2" y2="{bottom}"/>')
    parts.append(_text(x(1.0), bottom + 14, "threshold", "tick", "middle"))
    parts.append(_text(width - value_w, bottom + 14, f"{scale:g}×", "tick", "end"))
    parts.append("</svg>")
    return Markup("".join(parts))


# -- over time ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Series:
    """One named series of a chart over time: a value per bucket (None: no data)."""

    name: str
    values: Sequence[float | None]
    cls: str = "s0"


@dataclass(frozen=True)
class _Frame:
    """The plot area of a chart over ``[since, until)``."""

    since: float
    until: float
    width: int = 640
    height: int = 200
    left: int = 48
    right: int = 12
    top: int = 26
    bottom: int = 30

    def x(self, ts: float) -> float:
        span = max(self.until - self.since, 1e-9)
        return self.left + (self.width - self.left - self.right) * (ts - self.since) / span

    def y(self, value: float, top: float) -> float:
        plot_h = self.height - self.top - self.bottom
        return self.top + plot_h * (1.0 - min(1.0, max(0.0, value / top if top else 0.0)))


def _nice_top(value: float) -> float:
    """A round axis maximum at or above ``value`` (1, 2, 5 × 10^k)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def time_label(ts: float, span: float) -> str:
    """A tick label: the time of day for ranges up to two days, else the date."""
    when = dt.datetime.fromtimestamp(ts, dt.timezone.utc)
    return when.strftime("%H:%M" if span <= 2 * 86400 else "%m-%d")


def _frame_svg(frame: _Frame, top: float, label: str, unit: str, legend: Sequence[Series]) -> list[str]:
    """The chart's opening tag, grid, value ticks, time ticks and legend."""
    parts = [(f'<svg class="chart overtime" viewBox="0 0 {frame.width} {frame.height}" width="{frame.width}" '
              f'height="{frame.height}" role="img" aria-label="{escape(label)}">')]
    for tick in (0.0, top / 2, top):
        y = frame.y(tick, top)
        parts.append(f'<line class="grid" x1="{frame.left}" x2="{frame.width - frame.right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(_text(frame.left - 6, y + 4, f"{tick:g}", "tick", "end"))
    span = frame.until - frame.since
    for n in range(5):
        ts = frame.since + span * n / 4
        anchor = "start" if n == 0 else "end" if n == 4 else "middle"
        parts.append(_text(frame.x(ts), frame.height - frame.bottom + 16, time_label(ts, span), "tick", anchor))
    parts.append(_text(frame.left, 14, unit, "axis"))
    x = frame.width - frame.right
    for series in reversed(legend):  # right-aligned legend, first series leftmost
        parts.append(_text(x, 14, series.name, "legend", "end"))
        x -= 8 * len(series.name) + 6
        parts.append(f'<rect class="{series.cls}" x="{x - 10:.1f}" y="6" width="10" height="10"/>')
        x -= 22
    return parts


def stacked_bars(starts: Sequence[float], bucket: float, until: float, series: Sequence[Series],
                 label: str, unit: str = "requests") -> Markup:
    """Bars over time, one per bucket, the series stacked; each bar titled with its values."""
    frame = _Frame(starts[0] if starts else until - bucket, starts[-1] + bucket if starts else until)
    totals = [sum(float(s.values[n] or 0) for s in series) for n in range(len(starts))]
    top = _nice_top(max(totals + [0.0]))
    parts = _frame_svg(frame, top, label, unit, series)
    for n, start in enumerate(starts):
        x0, x1 = frame.x(start), frame.x(start + bucket)  # the last, partial bucket drawn whole
        base = 0.0
        details = []
        for s in series:
            value = float(s.values[n] or 0)
            if value:
                y0, y1 = frame.y(base + value, top), frame.y(base, top)
                parts.append(f'<rect class="{s.cls}" x="{x0 + 0.5:.1f}" y="{y0:.1f}" '
                             f'width="{max(0.5, x1 - x0 - 1):.1f}" height="{max(0.5, y1 - y0):.1f}"/>')
                details.append(f"{s.name} {value:g}")
                base += value
        if details:
            title = f"{time_label(start, until - frame.since)}: " + ", ".join(details)
            parts.append(f'<rect class="hit" x="{x0:.1f}" y="{frame.top}" width="{max(0.5, x1 - x0):.1f}" '
                         f'height="{frame.height - frame.top - frame.bottom}"><title>{escape(title)}</title></rect>')
    parts.append("</svg>")
    return Markup("".join(parts))


def lines_over_time(starts: Sequence[float], bucket: float, until: float, series: Sequence[Series],
                    label: str, unit: str, fixed_top: float | None = None,
                    threshold: float | None = None) -> Markup:
    """Lines over time through each bucket's middle (gaps where a value is None)."""
    frame = _Frame(starts[0] if starts else until - bucket, starts[-1] + bucket if starts else until)
    values = [float(v) for s in series for v in s.values if v is not None]
    top = fixed_top if fixed_top is not None else _nice_top(max(values + [0.0]))
    parts = _frame_svg(frame, top, label, unit, series)
    if threshold is not None:
        y = frame.y(threshold, top)
        parts.append(f'<line class="threshold" x1="{frame.left}" x2="{frame.width - frame.right}" '
                     f'y1="{y:.1f}" y2="{y:.1f}"><title>threshold {threshold:g}</title></line>')
    for s in series:
        run: list[str] = []
        for start, value in [*zip(starts, s.values), (frame.until, None)]:
            if value is None:
                if len(run) > 1:
                    parts.append(f'<polyline class="line {s.cls}" points="{" ".join(run)}"/>')
                elif run:
                    cx, cy = run[0].split(",")
                    parts.append(f'<circle class="{s.cls}" cx="{cx}" cy="{cy}" r="2"/>')
                run = []
                continue
            mid = start + bucket / 2
            run.append(f"{frame.x(mid):.1f},{frame.y(float(value), top):.1f}")
    parts.append("</svg>")
    return Markup("".join(parts))


def scores_over_time(points: Sequence[tuple[float, float, list[str]]], since: float, until: float,
                     threshold: float = 0.5) -> Markup:
    """An account's malicious score at each evaluation against time, the
    threshold dashed; evaluations with a reason to flag as red dots titled with it."""
    frame = _Frame(since, until)
    parts = _frame_svg(frame, 1.0, "Malicious score over time", "malicious score", [])
    y = frame.y(threshold, 1.0)
    parts.append(f'<line class="threshold" x1="{frame.left}" x2="{frame.width - frame.right}" '
                 f'y1="{y:.1f}" y2="{y:.1f}"><title>threshold {threshold:g}</title></line>')
    shown = _thin([Point(ts, score, bool(reasons), "; ".join(reasons)) for ts, score, reasons in points])
    if shown:
        line = " ".join(f"{frame.x(p.at):.1f},{frame.y(p.score, 1.0):.1f}" for p in shown)
        parts.append(f'<polyline class="score" points="{line}"/>')
    for p in shown:
        stamp = dt.datetime.fromtimestamp(p.at, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        title = f"{stamp}: {p.score:.2f}" + (f" — {p.note}" if p.note else "")
        parts.append(f'<circle class="{"flag" if p.flagged else "point"}" cx="{frame.x(p.at):.1f}" '
                     f'cy="{frame.y(p.score, 1.0):.1f}" r="{4 if p.flagged else 2.5}"><title>{escape(title)}</title></circle>')
    parts.append("</svg>")
    return Markup("".join(parts))
