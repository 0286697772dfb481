"""The usage figures the admin's page, its plots and the CSV export show, from the ledger's rollup.

One reading of the rollup serves all three, so the page and the export cannot disagree: per card
and day (hours sampled, hours busy, GPU-hours used), per user, group and class and day
(GPU-hours allocated and used), and per hour of each day the share of all cards in use (the heat
map). Days are UTC days, as in the rollup.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from spawner.ledger.usage_rollup import DAY_S, HOUR_S, UsageRollup

DATE_FORMAT = "%Y-%m-%d"
CSV_COLUMNS = (
    "record",
    "day",
    "node",
    "gpu",
    "pools",
    "user",
    "group",
    "class",
    "sampled_hours",
    "busy_hours",
    "allocated_gpu_hours",
    "used_gpu_hours",
    "measured",
)


class UsageRangeError(ValueError):
    """A ``from``/``to`` that is not a range of days; the message names the parameter."""


DAY_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def parse_day(name: str, text: str) -> date:
    """A day written YYYY-MM-DD, exactly (strptime alone also takes 2024-1-5)."""
    try:
        if not DAY_PATTERN.fullmatch(text):
            raise ValueError(text)
        return datetime.strptime(text, DATE_FORMAT).date()
    except ValueError:
        raise UsageRangeError(f"{name}: {text[:40]!r} is not a day; write it as YYYY-MM-DD (UTC)") from None


def day_range(first: str | None, last: str | None, today: date, max_days: int) -> tuple[date, date]:
    """The days asked for, both included: the last 14 days to today unless given."""
    # An empty parameter (?to=) is a mistake, not an absent one: it is parsed, and refused.
    end = parse_day("to", last) if last is not None else today
    try:
        start = parse_day("from", first) if first is not None else end - timedelta(days=13)
    except OverflowError:
        raise UsageRangeError(f"to: {end} leaves no 14 days before it; give from as well") from None
    if start > end:
        raise UsageRangeError(f"from: {start} is after to: {end}; give from <= to")
    if (end - start).days + 1 > max_days:
        raise UsageRangeError(f"from/to: {(end - start).days + 1} days asked; at most {max_days} at a time")
    return start, end


def epoch(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp())


def day_text(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime(DATE_FORMAT)


@dataclass
class CardDay:
    day: str
    node: str
    gpu: int
    pools: str
    sampled_hours: float = 0.0
    busy_hours: float = 0.0
    used_gpu_hours: float = 0.0
    measured: bool = True

    @property
    def label(self) -> str:
        return f"{self.node} #{self.gpu}"


@dataclass
class HolderDayFigures:
    day: str
    user: str
    group: str
    workload: str
    allocated_gpu_hours: float
    used_gpu_hours: float
    measured: bool


@dataclass
class UsageReport:
    """Every figure of the days ``first``..``last`` (both included)."""

    first: date
    last: date
    cards: list[CardDay] = field(default_factory=list)
    holders: list[HolderDayFigures] = field(default_factory=list)
    heat: dict[tuple[str, int], float] = field(default_factory=dict)
    """(day, hour of day) -> share of all sampled cards in use (0..1); absent where nothing was sampled."""

    @property
    def measured(self) -> bool:
        """False when any figure is not a measurement: a simulated GPU's allocation read as use, or a
        lease whose processes ran where NVML gives no utilisation (MIG)."""
        return all(card.measured for card in self.cards) and all(holder.measured for holder in self.holders)

    @property
    def simulated(self) -> bool:
        """Whether any card's figures are a simulated GPU's allocation (only those are unmeasured)."""
        return any(not card.measured for card in self.cards)

    @property
    def days(self) -> list[str]:
        count = (self.last - self.first).days + 1
        return [(self.first + timedelta(days=offset)).strftime(DATE_FORMAT) for offset in range(count)]

    def group_totals(self) -> list[tuple[str, float, float]]:
        """``(group, allocated GPU-hours, used GPU-hours)`` over the range, largest allocation first."""
        totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for holder in self.holders:
            totals[holder.group or "(none)"][0] += holder.allocated_gpu_hours
            totals[holder.group or "(none)"][1] += holder.used_gpu_hours
        return sorted(((group, a, u) for group, (a, u) in totals.items()), key=lambda row: (-row[1], row[0]))

    def busy_hours_by_card(self) -> dict[str, dict[str, float]]:
        """card label -> day -> busy hours (the case study's 'busy hours per card per day')."""
        series: dict[str, dict[str, float]] = defaultdict(dict)
        for card in self.cards:
            series[card.label][card.day] = card.busy_hours
        return dict(sorted(series.items()))

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for card in self.cards:
            writer.writerow(
                ("gpu", card.day, card.node, card.gpu, card.pools, "", "", "")
                + _hours(card.sampled_hours, card.busy_hours, None, card.used_gpu_hours)
                + (str(card.measured).lower(),)
            )
        for holder in self.holders:
            writer.writerow(
                ("holder", holder.day, "", "", "", _cell(holder.user), _cell(holder.group), holder.workload)
                + _hours(None, None, holder.allocated_gpu_hours, holder.used_gpu_hours)
                + (str(holder.measured).lower(),)
            )
        return out.getvalue()

    def to_json(self) -> dict:
        return {
            "from": self.first.strftime(DATE_FORMAT),
            "to": self.last.strftime(DATE_FORMAT),
            "measured": self.measured,
            "gpus": [
                {
                    "day": card.day,
                    "node": card.node,
                    "gpu": card.gpu,
                    "pools": card.pools,
                    "sampled_hours": round(card.sampled_hours, 6),
                    "busy_hours": round(card.busy_hours, 6),
                    "used_gpu_hours": round(card.used_gpu_hours, 6),
                    "measured": card.measured,
                }
                for card in self.cards
            ],
            "holders": [
                {
                    "day": holder.day,
                    "user": holder.user,
                    "group": holder.group or None,
                    "class": holder.workload,
                    "allocated_gpu_hours": round(holder.allocated_gpu_hours, 6),
                    "used_gpu_hours": round(holder.used_gpu_hours, 6),
                    "measured": holder.measured,
                }
                for holder in self.holders
            ],
        }


def _hours(*values: float | None) -> tuple[str, ...]:
    return tuple("" if value is None else f"{value:.6f}" for value in values)


def _cell(text: str) -> str:
    """A name as a CSV cell that a spreadsheet shows as text, never runs as a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def read_report(rollup: UsageRollup, first: date, last: date) -> UsageReport:
    """The figures of ``first``..``last`` from the rollup (blocking: run it in a thread)."""
    start, end = epoch(first), epoch(last) + DAY_S
    report = UsageReport(first, last)
    cards: dict[tuple[str, str], CardDay] = {}
    sampled: dict[tuple[str, int], float] = defaultdict(float)
    used: dict[tuple[str, int], float] = defaultdict(float)
    for hour in rollup.gpu_hours(start, end):
        day = day_text(hour.hour_start)
        card = cards.get((day, hour.gpu_uuid))
        if card is None:
            card = cards[(day, hour.gpu_uuid)] = CardDay(day, hour.node, hour.gpu_index, hour.pools)
        card.sampled_hours += hour.sampled_seconds / HOUR_S
        card.busy_hours += hour.busy_seconds / HOUR_S
        card.used_gpu_hours += hour.used_gpu_seconds / HOUR_S
        card.measured = card.measured and hour.measured
        slot = (day, (hour.hour_start % DAY_S) // HOUR_S)
        sampled[slot] += hour.sampled_seconds
        used[slot] += hour.used_gpu_seconds
    report.cards = sorted(cards.values(), key=lambda card: (card.day, card.node, card.gpu))
    report.heat = {slot: used[slot] / seconds for slot, seconds in sampled.items() if seconds > 0}
    report.holders = [
        HolderDayFigures(
            day_text(row.day_start),
            row.user,
            row.group,
            row.workload,
            row.allocated_gpu_seconds / HOUR_S,
            row.used_gpu_seconds / HOUR_S,
            row.measured,
        )
        for row in rollup.holder_days(start, end)
    ]
    return report


async def report_for(handler_settings: dict, first: str | None, last: str | None) -> UsageReport:
    """The report of the days asked for (``from``/``to``, both optional), for a handler: read from
    the monitor's rollup, or the ledger's when the monitor is off (its past figures remain)."""
    monitor = handler_settings.get("monitor")
    if monitor is not None:
        rollup = monitor.rollup
    else:
        rollup = UsageRollup(handler_settings["allocator"].ledger.engine)
    today = datetime.now(timezone.utc).date()
    start, end = day_range(first, last, today, rollup.retention_days)
    return await asyncio.to_thread(read_report, rollup, start, end)
