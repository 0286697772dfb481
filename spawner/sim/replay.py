"""Replay of a pod list against a cluster, the way the FGD paper's artifact evaluates policies.

The method is the artifact's (``hkust-adsl/kubernetes-scheduler-simulator``): the trace's tasks
are shuffled with the seed, then tasks drawn from the trace at random (with replacement) are
appended until the GPU they ask for would pass 130% of the cluster's GPUs; tasks arrive one by one
in that order and never leave, and a task that fits nowhere is dropped. After every task the
allocation of the cluster is recorded beside the GPU demand arrived so far; the allocation "at
x% arrived" is the mean over the tasks whose arrived demand rounds to x% of the cluster's GPUs.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from statistics import fmean

import numpy as np

from spawner.core.cluster import ClusterState
from spawner.core.placement import POLICIES, get_policy
from spawner.core.units import MILLI_PER_GPU, Node, SliceRequest

from .openb import TracePod

INFLATION = 1.3
FIRST_SEED = 42
"""The artifact runs seeds 42-51; ours are numbered the same (our generator is not Go's, so the
orders differ, but each seed is an independent draw of the same method)."""
CURVE_POINTS = tuple(range(0, 131, 5))
"""Arrived percentages at which the allocation curve is reported, as the published means are."""


@dataclass(frozen=True)
class ReplayResult:
    """Figures of one policy on one seed."""

    policy: str
    seed: int
    alloc_ratio_at_100: float
    alloc_ratio_final: float
    unallocated_gpus_final: float
    decisions_per_s: float
    """Placement decisions (with their bookkeeping) per CPU-second of this process: CPU time, so
    that other work on a shared machine does not count against the policy."""
    arrived: int
    placed: int
    alloc_curve: dict[int, float] = field(default_factory=dict)
    """Allocation (% of the cluster's GPUs) at each arrived percentage of ``CURVE_POINTS``."""


def arrival_order(
    pods: Sequence[TracePod], total_gpus: int, seed: int, inflation: float = INFLATION
) -> list[TracePod]:
    """A seeded arrival sequence: the whole trace shuffled, then tasks drawn from it at random
    until the next one would take the GPU demand past ``inflation`` times the cluster's GPUs.

    As in the artifact, the stop test adds the drawn task's share of one GPU (not its total), so
    the last task may be a gang that ends the sequence a little past the target.
    """
    rng = np.random.default_rng(seed)
    target = inflation * total_gpus * MILLI_PER_GPU
    ordered = sorted(pods, key=lambda pod: pod.name)
    arrivals = [ordered[index] for index in rng.permutation(len(ordered))]
    demand = sum(pod.request.total_milli for pod in arrivals)
    while ordered:
        pod = ordered[int(rng.integers(len(ordered)))]
        if demand + pod.request.per_gpu_milli > target:
            break
        arrivals.append(pod)
        demand += pod.request.total_milli
    return arrivals


def allocation_curve(
    arrived_milli: np.ndarray,
    allocated_milli: np.ndarray,
    total_gpus: int,
    points: Sequence[int] = CURVE_POINTS,
) -> dict[int, float]:
    """Allocation (%) at each arrived percentage, read as the artifact's analysis reads its logs.

    Each task's record is its arrived demand rounded to a whole percent and the allocation after
    it, in percent with two decimals; the figure at x% is the mean over the records at x%, or over
    those within one point of x% when none is exactly there.
    """
    arrived_pct = np.round(arrived_milli / total_gpus / 10.0)
    alloc_pct = np.round(allocated_milli / total_gpus / 10.0, 2)
    curve = {}
    for point in points:
        chosen = alloc_pct[arrived_pct == point]
        if not chosen.size:
            chosen = alloc_pct[(arrived_pct >= point - 1) & (arrived_pct <= point + 1)]
        if chosen.size:
            curve[point] = round(float(chosen.mean()), 2)
    return curve


def workload_mix(pods: Sequence[TracePod]) -> list[tuple]:
    """The trace's task types with their task counts: what FGD calls the target workload."""
    return list(Counter(pod.request for pod in pods).items())


ArrivalObserver = Callable[[SliceRequest, bool, int, ClusterState], None]
"""Called after each arrival with the request, whether it was placed, the GPU demand arrived so far
(milli-GPU, this task included) and the cluster as it stands: for analyses that need more than the
figures a replay returns (``spawner.sim.headroom``)."""


def replay(
    nodes: Sequence[Node],
    pods: Sequence[TracePod],
    policy_name: str,
    seed: int = FIRST_SEED,
    observe: ArrivalObserver | None = None,
) -> ReplayResult:
    cluster = ClusterState(nodes)
    policy = get_policy(policy_name, workload_mix(pods), seed=seed)
    arrivals = arrival_order(pods, cluster.total_gpus, seed)
    arrived = np.zeros(len(arrivals), dtype=np.int64)
    allocated = np.zeros(len(arrivals), dtype=np.int64)
    demand = used = placed = 0
    busy = 0.0
    for index, pod in enumerate(arrivals):
        request = pod.request
        started = time.process_time()
        placement = policy.place(cluster, request)
        if placement is not None:
            cluster.allocate(placement)
            placed += 1
            used += request.total_milli
        busy += time.process_time() - started
        demand += request.total_milli
        arrived[index] = demand
        allocated[index] = used
        if observe is not None:
            observe(request, placement is not None, demand, cluster)
    final = cluster.allocation_ratio()
    curve = allocation_curve(arrived, allocated, cluster.total_gpus)
    capacity = cluster.total_gpus * MILLI_PER_GPU
    if 100 in curve:
        at_100 = curve[100] / 100
    else:  # a cluster so small that no task's arrival lands near 100%: the first past it
        past = np.flatnonzero(arrived >= capacity)
        at_100 = allocated[past[0]] / capacity if past.size else final
    return ReplayResult(
        policy=policy_name,
        seed=seed,
        alloc_ratio_at_100=float(at_100),
        alloc_ratio_final=final,
        unallocated_gpus_final=cluster.total_gpus * (1 - final),
        decisions_per_s=len(arrivals) / busy if busy else float("inf"),
        arrived=len(arrivals),
        placed=placed,
        alloc_curve=curve,
    )


def _replay_job(job: tuple) -> ReplayResult:
    return replay(*job)


def compare(
    nodes: Sequence[Node],
    pods: Sequence[TracePod],
    policies: Sequence[str] | None = None,
    seeds: int = 5,
    workers: int | None = None,
    first_seed: int = FIRST_SEED,
) -> dict[str, dict]:
    """Every policy on the same seeds, in one run, averaged per policy.

    Besides the averaged figures, each policy's entry holds ``curve``: the mean allocation (%) at
    each arrived percentage of ``CURVE_POINTS``.
    """
    policies = list(policies or POLICIES)
    jobs = [(nodes, pods, name, seed) for seed in range(first_seed, first_seed + seeds) for name in policies]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_replay_job, jobs))
    else:
        results = [_replay_job(job) for job in jobs]
    summary = {}
    for name in policies:
        mine = [asdict(result) for result in results if result.policy == name]
        summary[name] = {
            key: fmean(result[key] for result in mine)
            for key in (
                "alloc_ratio_at_100",
                "alloc_ratio_final",
                "unallocated_gpus_final",
                "decisions_per_s",
            )
        }
        summary[name]["curve"] = {
            point: round(fmean(result["alloc_curve"][point] for result in mine), 2)
            for point in CURVE_POINTS
            if all(point in result["alloc_curve"] for result in mine)
        }
    return summary
