"""Server-side SVG charts of the dashboard: an account's score timeline and
its detectors' evidence. Plain strings, every text escaped; styled by the
dashboard's CSS through classes (no inline styles, so a strict CSP holds)."""

from __future__ import annotations

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
    """One evaluation on the timeline."""

    queries: int
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


def timeline(points: Sequence[Point], threshold: float = 0.5, width: int = 640, height: int = 220) -> Markup:
    """The malicious score against the account's queries, with the threshold line;
    flagged evaluations drawn as red dots, each point titled with its reasons."""
    left, right, top, bottom = 44, 12, 10, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    points = _thin(points)
    x_max = max([p.queries for p in points] + [1])

    def x(q: float) -> float:
        return left + plot_w * q / x_max

    def y(s: float) -> float:
        return top + plot_h * (1.0 - min(1.0, max(0.0, s)))

    parts = [(f'<svg class="chart timeline" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
              f'role="img" aria-label="Malicious score by queries">')]
    for tick in (0.0, 0.5, 1.0):
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}"/>')
        parts.append(_text(left - 6, y(tick) + 4, f"{tick:g}", "tick", "end"))
    parts.append(f'<line class="threshold" x1="{left}" x2="{width - right}" '
                 f'y1="{y(threshold):.1f}" y2="{y(threshold):.1f}"><title>threshold {threshold:g}</title></line>')
    for q in (0, x_max // 2, x_max):
        parts.append(_text(x(q), height - bottom + 16, str(q), "tick", "middle"))
    parts.append(_text(left + plot_w / 2, height - 4, "queries", "axis", "middle"))
    if points:
        line = " ".join(f"{x(p.queries):.1f},{y(p.score):.1f}" for p in points)
        parts.append(f'<polyline class="score" points="{line}"/>')
        for p in points:
            title = f"{p.queries} queries: {p.score:.2f}" + (f" — {p.note}" if p.note else "")
            parts.append(f'<circle class="{"flag" if p.flagged else "point"}" cx="{x(p.queries):.1f}" '
                         f'cy="{y(p.score):.1f}" r="{4 if p.flagged else 2.5}"><title>{escape(title)}</title></circle>')
    parts.append("</svg>")
    return Markup("".join(parts))


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
