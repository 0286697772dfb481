"""A week of work from the openb trace's creation and deletion times.

The openb pod lists (``../shared/data/openb``) give each task's creation, scheduling and deletion
time, in seconds over about 150 days. A single week of them keeps a few dozen GPUs busy, so the
scenario folds several of the trace's weeks onto one (each task keeps its weekday and time of day),
which keeps the trace's own rhythm and durations; ``copies`` lays that week over itself as so many
labs of the same habits sharing one cluster, to bring the load to a few hundred GPUs. A task
that shares a GPU (``gpu_milli`` below 1000) is a notebook slice held from its creation to its
deletion; a task of whole GPUs is a training run submitted at its creation that needs the GPUs
for as long as it ran (deletion minus scheduling). CPU-only tasks are left out. Each task is
charged to one of the scenario's groups, by its number in the trace.
"""

from __future__ import annotations

import csv
from pathlib import Path

from spawner.core.units import MILLI_PER_GPU, SliceRequest
from spawner.core.vocabulary import DEV_POOL

from .openb import TraceError
from .paths import openb_file
from .scenario import DAY_S, Scenario
from .workload import RunSpec, Session

WEEK_S = 7 * DAY_S


class TraceMissing(FileNotFoundError):
    """The shared openb data is not there (it is never copied into the project)."""


def trace_path(scenario: Scenario) -> Path:
    return openb_file(scenario.trace.pods)


def _int(path: Path, line: int, row: dict[str, str], column: str) -> int:
    text = (row.get(column) or "").strip()
    try:
        return int(text or 0)
    except ValueError:
        raise TraceError(f"{path}:{line}: column {column!r}: expected an integer, got {text!r}") from None


def trace_workload(scenario: Scenario, whole_gpu_slices: bool, seed: int = 0) -> tuple[list, list]:
    """The sessions and runs of the folded trace, in the replay's units (see the module docstring).

    The trace fixes every time, so ``seed`` changes nothing here; it is taken for the same call
    shape as the synthetic developers' day.
    """
    spec = scenario.trace
    path = trace_path(scenario)
    if not path.is_file():
        raise TraceMissing(
            f"{path}: the openb trace is not there (set GPUSLICE_OPENB_DIR or fetch ../shared/data)"
        )
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    groups = [group.name for group in scenario.groups]
    origin = scenario.warmup_days * DAY_S
    sessions, runs = [], []
    weeks = set(spec.weeks)
    for line, row in enumerate(rows, start=2):
        created = _int(path, line, row, "creation_time")
        deleted = _int(path, line, row, "deletion_time")
        scheduled = _int(path, line, row, "scheduled_time") or created
        if weeks and created // WEEK_S not in weeks:
            continue
        num_gpu = _int(path, line, row, "num_gpu")
        gpu_milli = _int(path, line, row, "gpu_milli")
        if num_gpu < 1 or gpu_milli < 1:
            continue
        at = origin + created % WEEK_S
        number = int("".join(ch for ch in row["name"] if ch.isdigit()) or line)
        for copy in range(spec.copies):
            group = groups[(number + copy) % len(groups)]
            name = row["name"] if spec.copies == 1 else f"{row['name']}-lab{copy + 1}"
            if num_gpu == 1 and gpu_milli < MILLI_PER_GPU:
                held = min(deleted - created, WEEK_S)
                if held <= 0:
                    continue
                request = (
                    SliceRequest(gpus=1, pool=DEV_POOL)
                    if whole_gpu_slices
                    else SliceRequest(milli_gpu=gpu_milli, pool=DEV_POOL)
                )
                sessions.append(Session(name, name, group, request, at, at + held, spec.busy_fraction))
            else:
                work = min(deleted - scheduled, WEEK_S)
                if work <= 0:
                    continue
                runs.append(RunSpec(name, group, num_gpu, float(work), float(work), submit_at=at))
    return sessions, runs
