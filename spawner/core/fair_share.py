"""Fair-share usage over time: each group's GPU-seconds, decayed, as one pass after another weighs them.

The batch scheduler orders groups inside a priority level by this figure (``fair_order``). The
service keeps it across passes (and across restarts, through the ledger) and the simulator keeps
it across a virtual week; both advance it with :func:`advance`, so the fair share a replay shows is
the one the service applies. Pure: the caller says what ran and when.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .scheduler import decayed_usage, gpu_seconds_between

Run = tuple[str | None, int, float | None, float | None]
"""``(group, gpus, started_at, ended_at)``: one job's hold on GPUs; ``ended_at`` None while it runs."""


def advance(
    usage: Mapping[str | None, float],
    runs: Iterable[Run],
    since: float | None,
    now: float,
    half_life_s: float,
) -> dict[str | None, float]:
    """Every group's usage at ``now``, from its usage at ``since`` and what ``runs`` used in between.

    ``runs`` are the jobs that held GPUs at some point of the interval: those still holding them
    and those that ended since (however short), each counted over its part of the interval. The
    old usage decays with ``half_life_s`` over the interval and the new GPU-seconds are added, so a
    pass that comes late (or a replay that skips idle stretches) counts the same GPU-seconds as
    many passes would. With no ``since`` (the first pass), nothing has elapsed and nothing is added.
    """
    start = now if since is None else since
    elapsed = now - start
    used = gpu_seconds_between(runs, start, now)
    advanced: dict[str | None, float] = {}
    for group in set(usage) | set(used):
        rate = used.get(group, 0.0) / elapsed if elapsed > 0 else 0.0
        advanced[group] = decayed_usage(usage.get(group, 0.0), rate, elapsed, half_life_s)
    return advanced
