"""A profile's compliance over time, drawn on the server as inline SVG (no JavaScript)."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from typing import Final

from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _

COMPLIANT: Final = "compliant"
NONCOMPLIANT: Final = "noncompliant"
FAILED: Final = "failed"
# Lanes from top to bottom: the outcome is told by position as well as by colour.
OUTCOMES: Final = (COMPLIANT, NONCOMPLIANT, FAILED)
# Fallback colours for the SVG standing alone; the admin's stylesheet overrides them with
# variables that follow the light/dark theme.
COLOURS: Final = {COMPLIANT: "#287a38", NONCOMPLIANT: "#ba2121", FAILED: "#9a5c00"}

WIDTH: Final = 1000
# Room for the lane labels, the longest "Evaluation failed".
_LEFT: Final = 128
_RIGHT: Final = 16
_TOP: Final = 22
_LANE: Final = 30
_RADIUS: Final = 6
# Room inside the plot so the first and last dots are not cut by its edges.
_PAD: Final = 12
# The axis's date formats, coarsest first: the first that tells every tick apart is used.
_TICK_FORMATS: Final = ("%Y-%m-%d", "%m-%d %H:%M", "%m-%d %H:%M:%S")


@dataclasses.dataclass(frozen=True)
class TimelinePoint:
    """One finished evaluation on the timeline."""

    when: datetime.datetime
    outcome: str  # one of OUTCOMES
    label: str = ""  # added to the tooltip, after the date and the outcome
    url: str = ""  # where clicking the point goes


def lane_y(outcome: str) -> int:
    """The y coordinate of an outcome's lane."""
    return _TOP + OUTCOMES.index(outcome) * _LANE


def render_timeline(points: Sequence[TimelinePoint], *, width: int = WIDTH) -> SafeString:
    """An ``<svg>`` with one dot per point in its outcome's lane, oldest on the left.

    Compliant and noncompliant verdicts are joined by a step line (a verdict holds until the
    next one); failed evaluations are only dots, since TrustHub gave no verdict.
    """
    points = sorted(points, key=lambda point: point.when)
    for point in points:
        if point.outcome not in OUTCOMES:
            raise ValueError(f"Unknown outcome {point.outcome!r}; expected one of {OUTCOMES}.")
    axis_y = _TOP + len(OUTCOMES) * _LANE - _LANE // 2
    height = axis_y + 26
    plot = width - _LEFT - _RIGHT
    if points:
        description = _("Compliance timeline: %(count)d evaluations from %(first)s to %(last)s") % {
            "count": len(points),
            "first": _date(points[0].when),
            "last": _date(points[-1].when),
        }
    else:
        description = _("Compliance timeline: no finished evaluations yet")

    # A group, not an image: an image's content is hidden from assistive technology, and the
    # dots are links to their evaluations (axe-core's nested-interactive rule).
    svg = format_html(
        '<svg class="trusthub-timeline" xmlns="http://www.w3.org/2000/svg" role="group" '
        'viewBox="0 0 {w} {h}" width="{w}" height="{h}" aria-label="{d}"><title>{d}</title>',
        w=width,
        h=height,
        d=description,
    )
    for outcome in OUTCOMES:
        y = lane_y(outcome)
        svg += format_html(
            '<text class="tl-label" x="{}" y="{}" fill="#666" font-size="12" '
            'dominant-baseline="middle">{}</text>',
            8,
            y,
            _lane_label(outcome),
        )
        if points:  # an empty chart carries a message across its lanes instead
            svg += format_html(
                '<line class="tl-grid" x1="{}" y1="{}" x2="{}" y2="{}" stroke="#ccc" '
                'stroke-dasharray="2 4"/>',
                _LEFT,
                y,
                width - _RIGHT,
                y,
            )
    svg += format_html(
        '<line class="tl-axis" x1="{}" y1="{}" x2="{}" y2="{}" stroke="#999"/>',
        _LEFT,
        axis_y,
        width - _RIGHT,
        axis_y,
    )
    if not points:
        svg += format_html(
            '<text class="tl-empty" x="{}" y="{}" fill="#666" font-size="13" '
            'text-anchor="middle" dominant-baseline="middle">{}</text></svg>',
            _LEFT + plot // 2,
            lane_y(NONCOMPLIANT),
            _("No finished evaluations yet."),
        )
        return svg

    first, last = points[0].when, points[-1].when
    span = (last - first).total_seconds()

    def x_of(when: datetime.datetime) -> float:
        if span <= 0:
            return _LEFT + plot / 2
        return _LEFT + _PAD + (plot - 2 * _PAD) * (when - first).total_seconds() / span

    verdicts = [point for point in points if point.outcome != FAILED]
    if len(verdicts) > 1:
        path = f"M{x_of(verdicts[0].when):.1f} {lane_y(verdicts[0].outcome)}"
        for point in verdicts[1:]:
            path += f" H{x_of(point.when):.1f} V{lane_y(point.outcome)}"
        svg += format_html(
            '<path class="tl-line" d="{}" fill="none" stroke="#999" stroke-width="1.5"/>', path
        )
    for point in points:
        tip = " · ".join(
            part for part in (_date(point.when), _lane_label(point.outcome), point.label) if part
        )
        dot = format_html(
            '<circle class="tl-point tl-{o}" cx="{x}" cy="{y}" r="{r}" fill="{c}">'
            "<title>{t}</title></circle>",
            o=point.outcome,
            x=f"{x_of(point.when):.1f}",
            y=lane_y(point.outcome),
            r=_RADIUS,
            c=COLOURS[point.outcome],
            t=tip,
        )
        if point.url:
            # Named for screen readers as the tooltip names it for the mouse.
            dot = format_html('<a href="{}" aria-label="{}">{}</a>', point.url, tip, dot)
        svg += dot
    # Dated ticks along the axis, each date once: the coarsest format that tells them apart
    # (with the time of day within two days), and when even seconds repeat, fewer ticks.
    fractions = [0.0, 0.25, 0.5, 0.75, 1.0] if span > 0 else [0.5]
    moments = [first + datetime.timedelta(seconds=span * fraction) for fraction in fractions]
    for pattern in _TICK_FORMATS[0 if span >= 2 * 86400 else 1 :]:
        labels = [_date(when, pattern) for when in moments]
        if len(set(labels)) == len(labels):
            break
    drawn: set[str] = set()
    for fraction, when, label in zip(fractions, moments, labels, strict=True):
        if label in drawn:
            continue
        drawn.add(label)
        x = f"{x_of(when):.1f}"
        anchor = "start" if fraction == 0 and span > 0 else "end" if fraction == 1 else "middle"
        svg += format_html(
            '<line class="tl-axis" x1="{x}" y1="{y1}" x2="{x}" y2="{y2}" stroke="#999"/>'
            '<text class="tl-label" x="{x}" y="{ty}" fill="#666" font-size="11" '
            'text-anchor="{a}">{t}</text>',
            x=x,
            y1=axis_y,
            y2=axis_y + 4,
            ty=axis_y + 17,
            a=anchor,
            t=label,
        )
    return svg + SafeString("</svg>")


def _lane_label(outcome: str) -> str:
    labels = {
        COMPLIANT: _("Compliant"),
        NONCOMPLIANT: _("Noncompliant"),
        # Not a verdict: the evaluation itself failed.
        FAILED: _("Evaluation failed"),
    }
    return labels[outcome]


def _date(when: datetime.datetime, pattern: str = "%Y-%m-%d %H:%M") -> str:
    if timezone.is_aware(when):
        when = timezone.localtime(when)
    return when.strftime(pattern)
