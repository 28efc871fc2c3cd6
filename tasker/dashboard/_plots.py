"""Small server-rendered SVG bar charts: one bar per minute, drawn from the queue's history.

A plot is a few dozen ``<rect>`` elements with a ``<title>`` each (the browser shows it as a
tooltip, with no script), colours as presentation attributes (the page's Content Security
Policy allows no inline ``style``). Rejected: a charting library in the browser (a build
step or a CDN, and JavaScript on a page that needs none) and matplotlib on the server (a
heavy dependency for sixty rectangles).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

__all__ = ["Series", "bar_chart"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Series:
    """Values per bucket (None: no data in it), oldest first, with their bucket labels."""

    label: str
    values: Sequence[float | None]
    bucket_labels: Sequence[str]
    colour: str
    unit: Callable[[float], str]


def bar_chart(series: Series, *, width: int = 240, height: int = 48) -> Markup:
    """An inline SVG bar chart of ``series``: bars scaled to the largest value, a tooltip
    per bar (its bucket and value), and the largest value written in the corner."""
    count = max(len(series.values), 1)
    step = width / count
    peak = max((v for v in series.values if v is not None), default=0.0)
    scale = (height - 12) / peak if peak > 0 else 0.0
    parts = [
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}"'
        f' height="{height}" viewBox="0 0 {width} {height}" role="img"'
        f' aria-label="{escape(series.label)}">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f6f7f9"/>',
    ]
    for index, (value, bucket) in enumerate(zip(series.values, series.bucket_labels, strict=True)):
        if value is None:
            continue
        bar = max(value * scale, 1.0 if value > 0 else 0.0)
        x = index * step
        tip = f"{bucket}: {series.unit(value)}"
        parts.append(
            f'<rect x="{x:.1f}" y="{height - bar:.1f}" width="{max(step - 1, 1):.1f}"'
            f' height="{bar:.1f}" fill="{escape(series.colour)}">'
            f"<title>{escape(tip)}</title></rect>"
        )
    top = series.unit(peak) if peak > 0 and math.isfinite(peak) else "none"
    parts.append(
        f'<text x="{width - 3}" y="10" text-anchor="end" font-size="9" fill="#555">'
        f"max {escape(top)}</text></svg>"
    )
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped above
