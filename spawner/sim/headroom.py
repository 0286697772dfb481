"""How much of what a replay leaves unallocated could any placement have recovered?

A target such as "10% fewer unallocated GPUs than FGD" means something only if that much of what
FGD leaves is recoverable at all. When a replay reaches a point (100% or 130% of the cluster's GPUs
arrived), what is unallocated is the free capacity of GPUs that hold fractional tasks, plus idle
GPUs that no arriving task could take (their node's CPU is used up, or their model is not the one
asked for). Whole-GPU tasks and gangs leave nothing free on the GPUs they take. So the question is
how tightly the fractional tasks that were placed could have been packed. Three figures answer
it, for exactly those tasks:

- ``packed_waste``: the free capacity left on the GPUs that hold fractions when the same tasks are
  packed offline, largest first, each onto the GPU that it leaves with the least room (best-fit
  decreasing). That packer sees every task in advance, may put any fraction on any GPU, and
  assumes every node has CPU to spare. An online policy sees tasks one at a time and never moves
  one, so it is not expected to leave less.
- ``online_waste``: the free capacity left when the same tasks, in the order they arrived, are
  each put on the GPU that leaves the least room (best fit), again on any GPU and with CPU to
  spare. It is what seeing tasks one at a time costs a packer free of every node constraint; the
  gap between it and a policy's figure is what the nodes' CPU, models and boundaries (and the
  policy) cost.
- ``waste_floor``: a lower bound on the free capacity of *any* packing of those tasks, offline
  or not. Two fractions above half a GPU cannot share a GPU, so each of them holds a GPU of its
  own, with a gap below half a GPU that only fractions no larger than the gap can fill. For a
  gap size ``g``, the fractions of at least ``1000 - g`` milli-GPU leave at least the sum of their
  gaps less the sum of all fractions of at most ``g`` free; the floor is the largest such figure
  over ``g``. On the openb traces it is set by the 0.81-GPU tasks, whose 0.19-GPU gaps only the
  rare tasks of 0.19 GPU or less can fill.

``headroom`` replays a trace with a policy and reports the three beside what the policy left
(``benchmarks/placement_headroom.py`` prints them per trace).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spawner.core.cluster import ClusterState
from spawner.core.units import MILLI_PER_GPU, Node, SliceRequest

from .openb import TracePod
from .replay import FIRST_SEED, replay

HALF_GPU_MILLI = MILLI_PER_GPU // 2


def _best_fit(fractions: Sequence[int]) -> int:
    """Free milli-GPU on the GPUs opened by putting each fraction, in the given order, on the GPU
    with the least room that fits it (a new GPU when none does).

    The GPUs are counted by how much room they have left (``room[r]`` GPUs with ``r`` milli
    free), so each task finds the tightest GPU with one scan of an array of 1,001 counters.
    """
    room = np.zeros(MILLI_PER_GPU + 1, dtype=np.int64)
    for size in fractions:
        if not 0 < size < MILLI_PER_GPU:
            raise ValueError(f"a fraction must be between 0 and {MILLI_PER_GPU} milli-GPU, not {size}")
        fitting = np.flatnonzero(room[size:MILLI_PER_GPU])
        left = int(fitting[0]) + size if fitting.size else MILLI_PER_GPU
        room[left] -= left != MILLI_PER_GPU
        room[left - size] += 1
    return int((np.arange(MILLI_PER_GPU + 1) * room).sum())


def packed_waste(fractions: Sequence[int]) -> int:
    """Free milli-GPU left by best-fit decreasing: ``fractions`` (milli-GPU, strictly between 0
    and one GPU) packed offline, largest first, each on the tightest GPU it fits."""
    return _best_fit(sorted(fractions, reverse=True))


def online_waste(fractions: Sequence[int]) -> int:
    """Free milli-GPU left by best fit in arrival order: each fraction, as it comes, on the
    tightest GPU it fits, any GPU being allowed."""
    return _best_fit(fractions)


def waste_floor(fractions: Sequence[int]) -> int:
    """A lower bound (milli-GPU) on the free capacity of any packing of ``fractions`` onto GPUs.

    For each gap size ``g`` below half a GPU: the fractions of at least ``1000 - g`` are larger
    than half a GPU, so no two share a GPU, and only fractions of at most ``g`` fit beside them
    (and those are smaller than half a GPU, so they are not among them). Their GPUs therefore keep
    at least ``sum(1000 - large) - sum(small)`` free.
    """
    sizes = np.sort(np.asarray(fractions, dtype=np.int64))
    large = sizes[sizes > HALF_GPU_MILLI]
    best = 0
    for gap in np.unique(MILLI_PER_GPU - large):
        held = large[large >= MILLI_PER_GPU - gap]
        fillers = sizes[sizes <= gap]
        best = max(best, int((MILLI_PER_GPU - held).sum() - fillers.sum()))
    return best


@dataclass(frozen=True)
class HeadroomPoint:
    """What a replay left unallocated at one arrived percentage, beside the two packings' figures
    for the fractional tasks it had placed (all in GPUs)."""

    arrived_pct: int
    unallocated_gpus: float
    idle_gpus: int
    """GPUs with nothing on them (no arriving task could take them, or none had arrived)."""
    fraction_gpus_free: float
    """Free capacity on the GPUs that hold fractional tasks."""
    packed_waste_gpus: float
    online_waste_gpus: float
    waste_floor_gpus: float
    fractions_placed: int


def headroom(
    nodes: Sequence[Node],
    pods: Sequence[TracePod],
    policy_name: str,
    seed: int = FIRST_SEED,
    points: Sequence[int] = (100, 130),
) -> list[HeadroomPoint]:
    """Replay ``pods`` with a policy and, when the arrived demand first reaches each percentage of
    ``points``, compare what is unallocated with the packings of the fractions placed so far.

    The replay is ``spawner.sim.replay.replay`` itself; the figures are read at the arrival that
    takes the demand to the point (or at the last arrival for a point the sequence never
    reaches), not averaged as the allocation curve is.
    """
    fractions: list[int] = []
    snapshots: list[HeadroomPoint] = []
    pending = sorted(points)
    last: list[ClusterState] = []

    def observe(request: SliceRequest, placed: bool, arrived_milli: int, cluster: ClusterState) -> None:
        if placed and request.is_fractional:
            fractions.append(request.milli_gpu)
        capacity = cluster.total_gpus * MILLI_PER_GPU
        while pending and arrived_milli * 100 >= pending[0] * capacity:
            snapshots.append(_snapshot(pending.pop(0), cluster, fractions))
        last[:] = [cluster]

    replay(nodes, pods, policy_name, seed, observe=observe)
    for point in pending:  # a point the arrivals never reached: read at the end
        snapshots.append(_snapshot(point, last[0], fractions))
    return snapshots


def _snapshot(point: int, cluster: ClusterState, fractions: list[int]) -> HeadroomPoint:
    free = np.where(cluster.present, cluster.milli_free, 0)
    idle = int(((free == MILLI_PER_GPU) & cluster.present).sum())
    partly = (free > 0) & (free < MILLI_PER_GPU)
    return HeadroomPoint(
        arrived_pct=point,
        unallocated_gpus=float(free.sum()) / MILLI_PER_GPU,
        idle_gpus=idle,
        fraction_gpus_free=float(free[partly].sum()) / MILLI_PER_GPU,
        packed_waste_gpus=packed_waste(fractions) / MILLI_PER_GPU,
        online_waste_gpus=online_waste(fractions) / MILLI_PER_GPU,
        waste_floor_gpus=waste_floor(fractions) / MILLI_PER_GPU,
        fractions_placed=len(fractions),
    )
