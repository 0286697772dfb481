"""What a replayed week is made of: developers' (or a trace's) slices, and the runs groups submit.

Kept apart from the replay (:mod:`spawner.sim.week`) so that the sources of a week (the scenario's
developers' day, an openb trace in :mod:`spawner.sim.trace_week`) build them without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass

from spawner.core.units import Placement, SliceRequest


@dataclass
class Session:
    """A developer's day (or a trace's notebook): a slice from arrival to departure."""

    id: str
    user: str
    group: str | None
    request: SliceRequest
    arrive_at: float
    leave_at: float
    busy_fraction: float
    state: str = "coming"  # coming, waiting, holding, refused, gone
    asked_at: float | None = None
    granted_at: float | None = None
    placement: Placement | None = None
    refusal: str | None = None


@dataclass(frozen=True)
class RunSpec:
    """A run some group will submit: at ``submit_at``, or (None) when its backlog needs it."""

    owner: str
    group: str | None
    gpus: int
    work_s: float
    time_limit_s: float
    submit_at: float | None = None
