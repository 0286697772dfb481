"""The usage page's three plots as inline SVG, drawn on the server from a :class:`UsageReport`.

Inline SVG rather than images: no plotting library to install in the service, the page stays one
request, the text stays selectable, and each mark carries a ``<title>`` that a browser shows on
hover (the exact figure). Every piece of text is escaped here, since group names are whatever an
admin typed; the result is marked safe for the template only after that.
"""

from __future__ import annotations

from html import escape

from markupsafe import Markup

from .usage import UsageReport

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
ALLOCATED_COLOUR, USED_COLOUR = "#9ecae1", "#08519c"


def _text(x: float, y: float, content: str, **attributes: str) -> str:
    extra = "".join(f' {name.replace("_", "-")}="{escape(value)}"' for name, value in attributes.items())
    return f'<text x="{x:.1f}" y="{y:.1f}"{extra}>{escape(content)}</text>'


def _green(share: float) -> str:
    """White (idle) to dark green (every card busy), by the share of cards in use."""
    share = max(0.0, min(1.0, share))
    low, high = (247, 252, 245), (0, 90, 50)
    red, green, blue = (round(a + (b - a) * share) for a, b in zip(low, high, strict=True))
    return f"rgb({red},{green},{blue})"


def heat_map(report: UsageReport) -> Markup:
    """Days down, hours (UTC) across; each cell the share of all cards' time in use that hour."""
    days = report.days
    cell_w, cell_h, left, top = 26, 18, 90, 24
    width, height = left + 24 * cell_w + 10, top + len(days) * cell_h + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" id="heat-map" width="{width}" '
        f'height="{height}" role="img" aria-label="GPU use by day and hour">'
    ]
    for hour in range(0, 24, 3):
        parts.append(_text(left + hour * cell_w + 2, top - 8, f"{hour:02d}h", font_size="11"))
    for row, day in enumerate(days):
        y = top + row * cell_h
        parts.append(_text(4, y + 13, day, font_size="11"))
        for hour in range(24):
            share = report.heat.get((day, hour))
            fill = "#eeeeee" if share is None else _green(share)
            label = f"{day} {hour:02d}:00 UTC: " + ("not sampled" if share is None else f"{share:.0%} in use")
            parts.append(
                f'<rect x="{left + hour * cell_w}" y="{y}" width="{cell_w - 1}" height="{cell_h - 1}" '
                f'fill="{fill}"><title>{escape(label)}</title></rect>'
            )
    parts.append(
        _text(
            left,
            height - 8,
            "grey: not sampled; white to green: 0% to 100% of all cards in use",
            font_size="11",
        )
    )
    parts.append("</svg>")
    return Markup("".join(parts))


def group_bars(report: UsageReport) -> Markup:
    """One pair of bars per group: GPU-hours allocated (light) and really used (dark)."""
    totals = report.group_totals()
    left, bar_h, gap, top, plot_w = 130, 12, 10, 10, 560
    height = top + max(1, len(totals)) * (2 * bar_h + gap) + 40
    largest = max(
        [allocated for _group, allocated, _used in totals] + [used for *_rest, used in totals] + [1e-9]
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" id="group-bars" width="{left + plot_w + 120}" '
        f'height="{height}" role="img" aria-label="GPU-hours allocated and used per group">'
    ]
    if not totals:
        parts.append(_text(left, top + 14, "no GPU-hours in this range"))
    for row, (group, allocated, used) in enumerate(totals):
        y = top + row * (2 * bar_h + gap)
        parts.append(_text(4, y + bar_h + 4, group[:18], font_size="12"))
        for offset, value, colour, what in (
            (0, allocated, ALLOCATED_COLOUR, "allocated"),
            (bar_h, used, USED_COLOUR, "used"),
        ):
            length = plot_w * value / largest
            parts.append(
                f'<rect x="{left}" y="{y + offset}" width="{length:.1f}" height="{bar_h - 1}" '
                f'fill="{colour}">'
                f"<title>{escape(group)}: {value:.2f} GPU-hours {what}</title></rect>"
            )
            parts.append(_text(left + length + 4, y + offset + bar_h - 2, f"{value:.1f} h", font_size="11"))
    legend_y = height - 12
    parts.append(f'<rect x="{left}" y="{legend_y - 9}" width="10" height="10" fill="{ALLOCATED_COLOUR}"/>')
    parts.append(_text(left + 14, legend_y, "allocated GPU-hours", font_size="11"))
    parts.append(f'<rect x="{left + 160}" y="{legend_y - 9}" width="10" height="10" fill="{USED_COLOUR}"/>')
    parts.append(_text(left + 174, legend_y, "used GPU-hours", font_size="11"))
    parts.append("</svg>")
    return Markup("".join(parts))


def busy_lines(report: UsageReport) -> Markup:
    """Busy hours (0..24) per card per day, one line per card."""
    days = report.days
    series = report.busy_hours_by_card()
    left, top, plot_w, plot_h = 40, 10, 620, 200
    step = plot_w / max(1, len(days) - 1)
    legend_rows = (len(series) + 3) // 4
    height = top + plot_h + 40 + 16 * legend_rows
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" id="busy-lines" width="{left + plot_w + 30}" '
        f'height="{height}" role="img" aria-label="Busy hours per card per day">'
    ]
    for hours in (0, 6, 12, 18, 24):
        y = top + plot_h * (1 - hours / 24)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#dddddd"/>')
        parts.append(_text(4, y + 4, f"{hours} h", font_size="11"))
    for index, day in enumerate(days):
        if index % max(1, len(days) // 7) == 0:
            parts.append(_text(left + index * step - 14, top + plot_h + 16, day[5:], font_size="11"))
    for number, (label, by_day) in enumerate(series.items()):
        colour = PALETTE[number % len(PALETTE)]
        points = [
            (left + index * step, top + plot_h * (1 - min(24.0, by_day.get(day, 0.0)) / 24))
            for index, day in enumerate(days)
        ]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        for (x, y), day in zip(points, days, strict=True):
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"><title>{escape(label)} {day}: '
                f"{by_day.get(day, 0.0):.2f} busy hours</title></circle>"
            )
        legend_x = left + (number % 4) * 160
        legend_y = top + plot_h + 34 + 16 * (number // 4)
        parts.append(f'<rect x="{legend_x}" y="{legend_y - 9}" width="10" height="10" fill="{colour}"/>')
        parts.append(_text(legend_x + 14, legend_y, label, font_size="11"))
    parts.append("</svg>")
    return Markup("".join(parts))
