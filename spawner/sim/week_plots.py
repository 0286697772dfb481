"""The week's figures as PNGs: GPUs busy by pool over the week per policy, and the queue length."""

from __future__ import annotations

from pathlib import Path

from .week import WeekResult


def _steps(timeline, index: int, end_h: float) -> tuple[list[float], list[float]]:
    times = [max(0.0, point[0]) / 3600 for point in timeline]
    values = [point[index] for point in timeline]
    if times:
        times.append(end_h)
        values.append(values[-1])
    return times, values


def write_plots(scenario, results: dict[str, WeekResult], directory: Path) -> list[Path]:
    """One PNG per policy (GPUs really busy in the dev and the train pool, stacked) and one of the
    queue length under every policy; the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    end_h = scenario.days * 24
    written = []
    for name, result in results.items():
        figure, axes = plt.subplots(figsize=(11, 3.6))
        times, dev = _steps(result.timeline, 1, end_h)
        _, train = _steps(result.timeline, 2, end_h)
        axes.stackplot(times, train, dev, step="post", labels=["train pool", "dev pool"], alpha=0.8)
        total = sum(result.pool_gpus.values())
        axes.axhline(total, color="black", linewidth=0.8, linestyle="--", label=f"{total} GPUs")
        axes.set_xlim(0, end_h)
        axes.set_xticks(range(0, end_h + 1, 24))
        axes.set_xlabel("hours since Monday 00:00")
        axes.set_ylabel("GPUs busy")
        figures = result.figures
        axes.set_title(
            f"{scenario.name} / {name}: {figures['runs_per_week']:.0f} runs a week, "
            f"{figures['busy_hours_per_card_per_day']:.1f} busy h per card per day"
        )
        axes.legend(loc="lower right")
        figure.tight_layout()
        path = directory / f"{scenario.name}-{name}-busy.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    figure, axes = plt.subplots(figsize=(11, 3.6))
    for name, result in results.items():
        times, queued = _steps(result.timeline, 3, end_h)
        axes.step(times, queued, where="post", label=name)
    axes.set_xlim(0, end_h)
    axes.set_xticks(range(0, end_h + 1, 24))
    axes.set_xlabel("hours since Monday 00:00")
    axes.set_ylabel("jobs queued")
    axes.set_title(f"{scenario.name}: queue length")
    axes.legend()
    figure.tight_layout()
    path = directory / f"{scenario.name}-queue.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    written.append(path)
    return written
