"""Placement policies: given the cluster's free capacity and a slice request, choose where it goes.

All policies share one interface (``place(cluster, request) -> Placement | None``) and the same
candidate rules (``ClusterState.candidate_mask``), so they differ only in how they rank the places
a request could go. They are selected by name with ``get_policy``; the live allocator and the
simulator call the same objects.

``fgd`` is fragmentation gradient descent (Weng et al., USENIX ATC '23): the fragmentation of a node
is the GPU capacity it has free that a request drawn from the workload could not use, averaged over
the workload's request sizes; a request goes where it makes that number grow least. ``default`` is
our policy: the same measure, with ties settled by best fit (see ``PackedFragmentation``).
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .cluster import ClusterState
from .units import MILLI_PER_GPU, Placement, SliceRequest

WorkloadMix = Sequence[tuple[SliceRequest, float]]
"""Request sizes with their relative frequency: what the cluster expects to be asked for."""


class UnknownPolicyError(ValueError):
    """A policy name that is not registered."""


class PlacementPolicy(abc.ABC):
    """Ranks the places a request could go; the lowest rank wins, ties go to the first node."""

    name: ClassVar[str]
    description: ClassVar[str]

    def place(self, cluster: ClusterState, request: SliceRequest) -> Placement | None:
        mask = cluster.candidate_mask(request)
        if request.is_fractional:
            rows, slots = np.nonzero(mask)
            if not rows.size:
                return None
            keys = self.slot_keys(cluster, request, rows, slots)
            best = _lexicographic_argmin(keys)
            return cluster.placement_for(int(rows[best]), [int(slots[best])], request)
        rows = np.flatnonzero(mask.any(axis=1)) if request.gpu_count else np.flatnonzero(mask[:, 0])
        if not rows.size:
            return None
        keys = self.node_keys(cluster, request, rows)
        row = int(rows[_lexicographic_argmin(keys)])
        slots = np.flatnonzero(mask[row]).tolist() if request.gpu_count else []
        return cluster.placement_for(row, slots, request)

    @abc.abstractmethod
    def slot_keys(
        self, cluster: ClusterState, request: SliceRequest, rows: np.ndarray, slots: np.ndarray
    ) -> list[np.ndarray]:
        """Sort keys (most significant first) for fractional candidates at (rows[i], slots[i])."""

    @abc.abstractmethod
    def node_keys(self, cluster: ClusterState, request: SliceRequest, rows: np.ndarray) -> list[np.ndarray]:
        """Sort keys (most significant first) for whole-GPU or CPU-only candidates on ``rows``."""


def _lexicographic_argmin(keys: list[np.ndarray]) -> int:
    """Index of the smallest key tuple; among equal tuples the first, so decisions are stable."""
    if len(keys) == 1:
        return int(np.argmin(keys[0]))
    # np.lexsort sorts by the last key first and is stable, so index order breaks remaining ties.
    return int(np.lexsort(tuple(reversed(keys)))[0])


def _node_free_milli(cluster: ClusterState, rows: np.ndarray) -> np.ndarray:
    return cluster.milli_free[rows].sum(axis=1)


def _remaining_share(cluster: ClusterState, request: SliceRequest, rows: np.ndarray) -> np.ndarray:
    """Weighted free share of GPU, CPU and memory left on each node after the request."""
    gpu_total = np.maximum(cluster.gpu_milli_total[rows], 1)
    gpu_left = (_node_free_milli(cluster, rows) - request.total_milli) / gpu_total
    cpu_left = (cluster.cpu_free[rows] - request.cpu_milli) / np.maximum(cluster.cpu_total[rows], 1)
    memory_left = (cluster.memory_free[rows] - request.memory_mib) / np.maximum(cluster.memory_total[rows], 1)
    return gpu_left + cpu_left + memory_left


class BestFit(PlacementPolicy):
    name = "best-fit"
    description = "the node with the least free GPU, CPU and memory left after placing (weighted sum)"

    def slot_keys(self, cluster, request, rows, slots):
        return [_remaining_share(cluster, request, rows), cluster.milli_free[rows, slots]]

    def node_keys(self, cluster, request, rows):
        return [_remaining_share(cluster, request, rows)]


class Packing(PlacementPolicy):
    name = "packing"
    description = "GPUs already in use first, then idle GPUs of busy nodes, then idle nodes"

    def slot_keys(self, cluster, request, rows, slots):
        node_free = _node_free_milli(cluster, rows)
        gpu_free = cluster.milli_free[rows, slots]
        return [
            (gpu_free == MILLI_PER_GPU).astype(np.int8),
            (node_free == cluster.gpu_milli_total[rows]).astype(np.int8),
            gpu_free,
            node_free,
        ]

    def node_keys(self, cluster, request, rows):
        node_free = _node_free_milli(cluster, rows)
        return [(node_free == cluster.gpu_milli_total[rows]).astype(np.int8), node_free]


class Spread(PlacementPolicy):
    name = "spread"
    description = "the node with the most free GPU capacity, and on it the emptiest GPU (load balancing)"

    def slot_keys(self, cluster, request, rows, slots):
        return [-_node_free_milli(cluster, rows), -cluster.milli_free[rows, slots]]

    def node_keys(self, cluster, request, rows):
        return [-_node_free_milli(cluster, rows), -cluster.cpu_free[rows]]


# ----------------------------------------------------------------------------- fragmentation


@dataclass(frozen=True)
class _TaskTypes:
    """The workload mix as arrays over task types, restricted to types that use a GPU.

    Types that use no GPU see every free GPU as fragment on every node, so they add the same
    amount to every candidate's score and cannot change a decision; leaving them out saves work.
    Types are grouped by GPU shape (per-GPU milli, GPU count, models, pool): types of one shape see
    the same GPUs as usable and differ only in whether the node's CPU and memory fit them.
    """

    cpu: np.ndarray
    memory: np.ndarray
    weight: np.ndarray
    shape_of: np.ndarray  # index of each type's GPU shape
    shape_milli: np.ndarray
    shape_count: np.ndarray
    shape_models: tuple[frozenset[str], ...]
    shape_pools: tuple[str | None, ...]

    @classmethod
    def from_mix(
        cls, mix: Iterable[tuple[SliceRequest, float]], coverage: float = 1.0, step: int = 10
    ) -> _TaskTypes:
        """The most frequent GPU task types that together make ``coverage`` of the mix.

        As in the reference implementation of FGD ("typical pods"), types are taken in order of
        frequency, ``step`` at a time, until they cover the share asked for, then renormalised.
        """
        merged: Counter = Counter()
        for request, weight in mix:
            if request.gpu_count and weight > 0:
                merged[request] += weight
        total = sum(merged.values())
        ranked = sorted(merged.items(), key=lambda item: -item[1])
        kept, covered = 0, 0.0
        while kept < len(ranked) and covered < coverage * total - 1e-9:
            for _, weight in ranked[kept : kept + step]:
                covered += weight
            kept = min(kept + step, len(ranked))
        requests = [request for request, _ in ranked[:kept]]
        shapes: dict[tuple, int] = {}
        for r in requests:
            shapes.setdefault((r.per_gpu_milli, r.gpu_count, r.gpu_models, r.pool), len(shapes))
        covered = covered or 1.0
        return cls(
            cpu=np.array([r.cpu_milli for r in requests], dtype=np.int64),
            memory=np.array([r.memory_mib for r in requests], dtype=np.int64),
            weight=np.array([merged[r] / covered for r in requests], dtype=np.float64),
            shape_of=np.array(
                [shapes[(r.per_gpu_milli, r.gpu_count, r.gpu_models, r.pool)] for r in requests],
                dtype=np.int64,
            ),
            shape_milli=np.array([shape[0] for shape in shapes], dtype=np.int32),
            shape_count=np.array([shape[1] for shape in shapes], dtype=np.int32),
            shape_models=tuple(shape[2] for shape in shapes),
            shape_pools=tuple(shape[3] for shape in shapes),
        )


class _FragmentationCache:
    """Per-node fragmentation aggregates and per-request best moves, kept against one cluster.

    The fragmentation of a node is ``sum_t w_t * (unusable_t if t fits else free)``: for each task
    type ``t``, the free GPU milli that ``t`` could not use, or all of it if ``t`` does not fit on
    the node at all. Grouping types by GPU shape ``s`` rewrites it as
    ``W * free + sum_s (unusable_s - free) * [enough GPUs for s] * H_s``, where ``H_s`` is the
    weight of the shape's types whose CPU and memory fit. The GPU-by-GPU work is then per shape,
    not per type, which keeps a decision on 6,000 GPUs well under a millisecond.

    A move's change of fragmentation depends only on its node's state, so it is cached per
    request and recomputed only for nodes whose version moved since.
    """

    def __init__(self, cluster: ClusterState, types: _TaskTypes):
        self.cluster = cluster
        self.types = types
        n_nodes, n_slots = cluster.present.shape
        n_shapes = len(types.shape_milli)
        self.eligible = np.zeros((n_shapes, n_nodes, n_slots), dtype=bool)
        for index in range(n_shapes):
            self.eligible[index] = cluster.eligible(types.shape_models[index], types.shape_pools[index])
        self.milli_s = types.shape_milli[:, None, None]
        self.count_s = types.shape_count[:, None]
        # H_s is a dominance sum over (CPU, memory) thresholds: tabulate it once as cumulative
        # sums over the distinct thresholds, so each node needs two binary searches, not a loop.
        self.cpu_levels, cpu_rank = np.unique(types.cpu, return_inverse=True)
        self.memory_levels, memory_rank = np.unique(types.memory, return_inverse=True)
        table = np.zeros((n_shapes, len(self.cpu_levels) + 1, len(self.memory_levels) + 1))
        np.add.at(table, (types.shape_of, cpu_rank + 1, memory_rank + 1), types.weight)
        self.host_table = table.cumsum(axis=1).cumsum(axis=2)
        self.total_weight = float(types.weight.sum())
        self.fit_count = np.zeros((n_shapes, n_nodes), dtype=np.int32)
        self.unusable = np.zeros((n_shapes, n_nodes), dtype=np.int64)
        self.free_total = np.zeros(n_nodes, dtype=np.int64)
        self.fragmentation = np.zeros(n_nodes, dtype=np.float64)
        self.aggregate_version = np.full(n_nodes, -1, dtype=np.int64)
        self.moves: dict[SliceRequest, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def host_weight(self, cpu_free: np.ndarray, memory_free: np.ndarray) -> np.ndarray:
        """``H_s`` per node: weight of each shape's types whose CPU and memory fit."""
        cpu_index = np.searchsorted(self.cpu_levels, cpu_free, side="right")
        memory_index = np.searchsorted(self.memory_levels, memory_free, side="right")
        return self.host_table[:, cpu_index, memory_index]

    def refresh_aggregates(self) -> None:
        cluster = self.cluster
        rows = np.flatnonzero(self.aggregate_version != cluster.version)
        if not rows.size:
            return
        free = cluster.milli_free[rows]
        fits = self.eligible[:, rows] & (free[None] >= self.milli_s)
        fit_count = fits.sum(axis=2)
        unusable = np.where(fits, 0, free[None]).sum(axis=2)
        free_total = free.sum(axis=1)
        host = self.host_weight(cluster.cpu_free[rows], cluster.memory_free[rows])
        enough = fit_count >= self.count_s
        self.fit_count[:, rows] = fit_count
        self.unusable[:, rows] = unusable
        self.free_total[rows] = free_total
        self.fragmentation[rows] = self.total_weight * free_total + (
            (unusable - free_total[None]) * enough * host
        ).sum(axis=0)
        self.aggregate_version[rows] = cluster.version[rows]

    def best_moves(self, request: SliceRequest) -> tuple[np.ndarray, np.ndarray]:
        """For every node: the fragmentation change of its best move for ``request`` (inf if it
        does not fit) and the GPU slot of that move (fractional requests)."""
        cluster = self.cluster
        entry = self.moves.get(request)
        if entry is None:
            n_nodes = len(cluster.nodes)
            entry = (
                np.full(n_nodes, -1, dtype=np.int64),
                np.full(n_nodes, np.inf),
                np.zeros(n_nodes, dtype=np.int64),
            )
            self.moves[request] = entry
        seen, delta, slot = entry
        stale = seen != cluster.version
        if stale.any():
            candidates = cluster.candidate_mask(request)
            feasible = candidates.any(axis=1)
            delta[stale & ~feasible] = np.inf
            rows = np.flatnonzero(stale & feasible)
            if rows.size:
                self.refresh_aggregates()
                delta[rows], slot[rows] = self._moves_for(request, rows, candidates[rows])
            seen[stale] = cluster.version[stale]
        return delta, slot

    def _moves_for(
        self, request: SliceRequest, rows: np.ndarray, candidates: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        cluster = self.cluster
        host = self.host_weight(
            cluster.cpu_free[rows] - request.cpu_milli, cluster.memory_free[rows] - request.memory_mib
        )
        before = self.fragmentation[rows]
        fit_count = self.fit_count[:, rows]
        unusable = self.unusable[:, rows]
        free_total = self.free_total[rows]
        if request.is_fractional:
            free = cluster.milli_free[rows]
            after = free - request.milli_gpu
            eligible = self.eligible[:, rows]
            fit_before = eligible & (free[None] >= self.milli_s)
            fit_after = eligible & (after[None] >= self.milli_s)
            count_after = fit_count[:, :, None] + fit_after.astype(np.int32) - fit_before
            free_after = (free_total - request.milli_gpu)[None, :, None]
            unusable_after = (
                unusable[:, :, None]
                + np.where(fit_after, 0, after[None])
                - np.where(fit_before, 0, free[None])
            )
            enough = count_after >= self.count_s[:, :, None]
            fragment = self.total_weight * free_after[0] + (
                (unusable_after - free_after) * enough * host[:, :, None]
            ).sum(axis=0)
            change = np.where(candidates, fragment - before[:, None], np.inf)
            best_slot = np.argmin(change, axis=1)
            return change[np.arange(rows.size), best_slot], best_slot
        if request.gpu_count:
            free = cluster.milli_free[rows]
            taken = candidates[None] & self.eligible[:, rows] & (free[None] >= self.milli_s)
            count_after = fit_count - taken.sum(axis=2)
            unusable_after = unusable - np.where(candidates[None] & ~taken, free[None], 0).sum(axis=2)
            free_after = free_total - request.total_milli
        else:
            count_after, unusable_after, free_after = fit_count, unusable, free_total
        enough = count_after >= self.count_s
        fragment = self.total_weight * free_after + ((unusable_after - free_after[None]) * enough * host).sum(
            axis=0
        )
        return fragment - before, np.zeros(rows.size, dtype=np.int64)


class FragmentationGradientDescent(PlacementPolicy):
    """FGD as published: the move that grows expected fragmentation least, first node on ties.

    ``workload`` is the mix of request sizes the cluster expects (the trace's task types, weighted
    by how many tasks of each there are). Without one, the policy learns the mix from the requests
    it is asked to place on each cluster.
    """

    name = "fgd"
    description = "fragmentation gradient descent (Weng et al., ATC '23), weighted by task count"

    typical_coverage = 1.0
    """Share of the workload's tasks that its typical types must cover. The reference code cuts
    at 60% for speed; the measure is exact at 1.0, which is affordable here and makes FGD stronger."""

    def __init__(self, workload: WorkloadMix | None = None):
        self.workload = list(workload) if workload is not None else None

    def type_weight(self, request: SliceRequest, frequency: float) -> float:
        """How much a task type counts in the fragmentation measure."""
        return frequency

    def _cache(self, cluster: ClusterState, request: SliceRequest) -> _FragmentationCache:
        key = (type(self), id(self))
        state = cluster.policy_cache.get(key)
        if self.workload is not None:
            if state is None:
                state = _FragmentationCache(cluster, self._types(self.workload))
                cluster.policy_cache[key] = state
            return state
        # Learning the mix: rebuild the measure when a new request shape appears or the requests
        # seen have doubled since the last build, so the weights follow the mix without paying
        # a rebuild per request.
        seen, cache, built_at, total = state if state else (Counter(), None, 0, 0)
        seen[request] += 1
        total += 1
        if cache is None or seen[request] == 1 or total >= 2 * built_at:
            cache = _FragmentationCache(cluster, self._types(seen.items()))
            built_at = total
        cluster.policy_cache[key] = (seen, cache, built_at, total)
        return cache

    def _types(self, mix: Iterable[tuple[SliceRequest, float]]) -> _TaskTypes:
        return _TaskTypes.from_mix(
            ((request, self.type_weight(request, f)) for request, f in mix), self.typical_coverage
        )

    def place(self, cluster: ClusterState, request: SliceRequest) -> Placement | None:
        cache = self._cache(cluster, request)
        change, slot = cache.best_moves(request)
        row = self.choose(cluster, request, change)
        if row is None:
            return None
        if request.is_fractional:
            slots = [int(slot[row])]
        elif request.gpu_count:
            slots = np.flatnonzero(cluster.candidate_mask(request)[row]).tolist()
        else:
            slots = []
        return cluster.placement_for(row, slots, request)

    tie = 1e-6
    """Changes closer than this (milli-GPU) are equal: floating-point noise must not decide."""

    def choose(self, cluster: ClusterState, request: SliceRequest, change: np.ndarray) -> int | None:
        best = float(np.min(change))
        if not np.isfinite(best):
            return None
        return int(np.flatnonzero(change <= best + self.tie)[0])

    def slot_keys(self, cluster, request, rows, slots):  # pragma: no cover - place() is overridden
        raise TypeError("FGD ranks moves in place()")

    def node_keys(self, cluster, request, rows):  # pragma: no cover - place() is overridden
        raise TypeError("FGD ranks moves in place()")


class PackedFragmentation(FragmentationGradientDescent):
    """Our default: FGD's measure, with ties settled by best fit so empty capacity stays together.

    FGD ranks a move only by how much expected fragmentation it adds. Many moves add the same
    amount (an idle GPU taken on any of several nodes, a slice that fits exactly anywhere), and FGD
    then takes the first node in the list, which scatters work in no useful order. The principle
    added here: when moves are equal for fragmentation (within ``tolerance`` milli-GPU of the
    best), take the one on the node left with the least free GPU and CPU, each as a share of the
    node. Free capacity then stays concentrated on few nodes, where gangs and large slices can
    still use it, and GPUs are not left stranded on nodes whose CPUs ran out (the two resources
    that strand each other on GPU nodes). No move is ever taken that FGD's own measure ranks worse.
    """

    name = "default"
    description = "FGD's fragmentation measure; ties go to the node left fullest (GPU and CPU share)"

    tolerance = 1.0
    """Moves within this many milli-GPU of expected fragmentation of the best count as equal."""

    def choose(self, cluster: ClusterState, request: SliceRequest, change: np.ndarray) -> int | None:
        best = float(np.min(change))
        if not np.isfinite(best):
            return None
        near = np.flatnonzero(change <= best + self.tolerance)
        if near.size == 1:
            return int(near[0])
        gpu_left = cluster.milli_free[near].sum(axis=1) / np.maximum(cluster.gpu_milli_total[near], 1)
        cpu_left = cluster.cpu_free[near] / np.maximum(cluster.cpu_total[near], 1)
        return int(near[np.argmin(gpu_left + cpu_left)])


POLICIES: dict[str, type[PlacementPolicy]] = {
    policy.name: policy
    for policy in (PackedFragmentation, FragmentationGradientDescent, BestFit, Packing, Spread)
}


def get_policy(name: str, workload: WorkloadMix | None = None) -> PlacementPolicy:
    """The policy registered under ``name``; fragmentation policies take the expected workload."""
    policy_class = POLICIES.get(name)
    if policy_class is None:
        raise UnknownPolicyError(f"unknown placement policy {name!r}; choose one of {', '.join(POLICIES)}")
    if issubclass(policy_class, FragmentationGradientDescent):
        return policy_class(workload)
    return policy_class()
