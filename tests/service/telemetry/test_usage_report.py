"""The usage report the page, its plots and the CSV export share, read from a real rollup."""

from __future__ import annotations

import csv
import io
from datetime import date

import pytest

from spawner.ledger.usage_rollup import HOUR_S, PendingUsage, UsageRollup
from spawner.service.telemetry import plots
from spawner.service.telemetry.usage import UsageRangeError, day_range, epoch, read_report

DAY = date(2024, 5, 13)


@pytest.fixture
def report(ledger):
    start = epoch(DAY) + 9 * HOUR_S
    pending = PendingUsage()
    pending.add_gpu(
        "g0", "node-a", 0, "dev", start, start + 2 * HOUR_S, busy=True, used_fraction=0.5, measured=True
    )
    pending.add_gpu(
        "g1", "node-a", 1, "train", start, start + HOUR_S, busy=False, used_fraction=0.0, measured=True
    )
    pending.add_holder(
        "alice",
        "vision",
        "interactive",
        start,
        start + 2 * HOUR_S,
        allocated_gpus=0.125,
        used_gpus=0.1,
        measured=True,
    )
    pending.add_holder(
        "=cmd()",
        "<script>x</script>",
        "batch",
        start,
        start + HOUR_S,
        allocated_gpus=2,
        used_gpus=1,
        measured=True,
    )
    rollup = UsageRollup(ledger.engine)
    rollup.add(pending, start + 2 * HOUR_S)
    return read_report(rollup, DAY, DAY)


def test_figures_per_card_per_day_per_group_and_per_hour(report):
    [g0, g1] = report.cards
    assert (g0.label, g0.sampled_hours, g0.busy_hours, g0.used_gpu_hours) == ("node-a #0", 2.0, 2.0, 1.0)
    assert (g1.busy_hours, g1.used_gpu_hours) == (0.0, 0.0)
    assert report.group_totals() == [("<script>x</script>", 2.0, 1.0), ("vision", 0.25, pytest.approx(0.2))]
    # 09:00: g0 half busy and g1 idle, so a quarter of all cards' time; 10:00: g0 alone, half.
    assert report.heat == {("2024-05-13", 9): 0.25, ("2024-05-13", 10): 0.5}
    assert report.busy_hours_by_card() == {"node-a #0": {"2024-05-13": 2.0}, "node-a #1": {"2024-05-13": 0.0}}
    assert report.measured


def test_the_csv_has_one_row_per_card_day_and_holder_day_and_no_formula_cells(report):
    rows = list(csv.DictReader(io.StringIO(report.csv())))
    assert [row["record"] for row in rows] == ["gpu", "gpu", "holder", "holder"]
    holders = {row["user"]: row for row in rows if row["record"] == "holder"}
    assert (
        holders["alice"]["allocated_gpu_hours"] == "0.250000" and holders["alice"]["class"] == "interactive"
    )
    assert "'=cmd()" in holders  # a spreadsheet shows it as text, never runs it


def test_the_plots_escape_every_name(report):
    bars = str(plots.group_bars(report))
    assert "<script>" not in bars and "&lt;script&gt;x&lt;/script&gt;" in bars
    heat = str(plots.heat_map(report))
    assert heat.count("<rect") == 24 and "2024-05-13 09:00 UTC: 25% in use" in heat
    assert "node-a #0 2024-05-13: 2.00 busy hours" in str(plots.busy_lines(report))


def test_day_ranges_default_to_the_last_14_days_and_refuse_nonsense():
    assert day_range(None, None, DAY, 400) == (date(2024, 4, 30), DAY)
    for first, last, words in (
        ("2024-5-1", None, "from: '2024-5-1' is not a day"),
        ("", None, "from: '' is not a day"),
        ("2024-05-14", "2024-05-13", "after to"),
        ("2023-01-01", "2024-05-13", "at most 400"),
        (None, "0001-01-05", "no 14 days before it"),
    ):
        with pytest.raises(UsageRangeError, match=words):
            day_range(first, last, DAY, 400)
