"""Replay of a pod list against a cluster, the way the FGD paper evaluates placement policies.

Tasks arrive one by one in a seeded random order and never leave; the workload is inflated by
resampling tasks until the GPU it asks for reaches 130% of the cluster's GPUs; a task that fits
nowhere is dropped. What matters is how much of the cluster ends up allocated: at the moment the
arrived demand reaches 100% of capacity, and at the end.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from statistics import fmean

import numpy as np

from spawner.core.cluster import ClusterState
from spawner.core.placement import POLICIES, get_policy
from spawner.core.units import MILLI_PER_GPU, Node

from .openb import TracePod

INFLATION = 1.3


@dataclass(frozen=True)
class ReplayResult:
    """Figures of one policy on one seed."""

    policy: str
    seed: int
    alloc_ratio_at_100: float
    alloc_ratio_final: float
    unallocated_gpus_final: float
    decisions_per_s: float
    arrived: int
    placed: int


def arrival_order(
    pods: Sequence[TracePod], total_gpus: int, seed: int, inflation: float = INFLATION
) -> list[TracePod]:
    """A seeded arrival sequence: the trace shuffled, then resampled until demand hits the target."""
    rng = np.random.default_rng(seed)
    target = inflation * total_gpus * MILLI_PER_GPU
    arrivals: list[TracePod] = []
    demand = 0
    shuffled = rng.permutation(len(pods))
    position = 0
    while demand < target and pods:
        if position < len(shuffled):
            pod = pods[shuffled[position]]
        else:
            pod = pods[rng.integers(len(pods))]
        position += 1
        arrivals.append(pod)
        demand += pod.request.total_milli
    return arrivals


def workload_mix(pods: Sequence[TracePod]) -> list[tuple]:
    """The trace's task types with their task counts: what FGD calls the target workload."""
    return list(Counter(pod.request for pod in pods).items())


def replay(nodes: Sequence[Node], pods: Sequence[TracePod], policy_name: str, seed: int) -> ReplayResult:
    cluster = ClusterState(nodes)
    policy = get_policy(policy_name, workload_mix(pods))
    capacity = cluster.total_gpus * MILLI_PER_GPU
    demand = 0
    ratio_at_100 = None
    placed = 0
    busy = 0.0
    arrivals = arrival_order(pods, cluster.total_gpus, seed)
    for pod in arrivals:
        started = time.perf_counter()
        placement = policy.place(cluster, pod.request)
        if placement is not None:
            cluster.allocate(placement)
            placed += 1
        busy += time.perf_counter() - started
        demand += pod.request.total_milli
        if ratio_at_100 is None and demand >= capacity:
            ratio_at_100 = cluster.allocation_ratio()
    final = cluster.allocation_ratio()
    return ReplayResult(
        policy=policy_name,
        seed=seed,
        alloc_ratio_at_100=final if ratio_at_100 is None else ratio_at_100,
        alloc_ratio_final=final,
        unallocated_gpus_final=cluster.total_gpus * (1 - final),
        decisions_per_s=len(arrivals) / busy if busy else float("inf"),
        arrived=len(arrivals),
        placed=placed,
    )


def _replay_job(job: tuple) -> ReplayResult:
    return replay(*job)


def compare(
    nodes: Sequence[Node],
    pods: Sequence[TracePod],
    policies: Sequence[str] | None = None,
    seeds: int = 5,
    workers: int | None = None,
) -> dict[str, dict[str, float]]:
    """Every policy on the same seeds, in one run, averaged per policy."""
    policies = list(policies or POLICIES)
    jobs = [(nodes, pods, name, seed) for seed in range(seeds) for name in policies]
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
    return summary
