"""The free capacity of a cluster, held in arrays so that a policy can score every node at once.

A placement decision on the openb cluster (1,213 nodes, 6,212 GPUs) must take well under a
millisecond in Python, which rules out a loop over nodes per decision. ``ClusterState`` therefore
keeps one row per node and one column per GPU slot, and a version counter per node, so that
policies can cache per-node work and redo only the rows that changed since they last looked.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .units import MILLI_PER_GPU, GPUShare, Node, Placement, SliceRequest, describe_milli


class CapacityError(RuntimeError):
    """A placement that does not fit the capacity it was applied to (a bug in the caller)."""


class ClusterState:
    """Free GPU milli, GPU memory, CPU and host memory of every node, updated by placements."""

    def __init__(self, nodes: Sequence[Node]):
        self.nodes: list[Node] = list(nodes)
        n_nodes = len(self.nodes)
        n_slots = max([len(node.gpus) for node in self.nodes] + [1])
        self.node_index: dict[str, int] = {}
        self.gpu_slot: dict[str, tuple[int, int]] = {}
        self.present = np.zeros((n_nodes, n_slots), dtype=bool)
        self.milli_free = np.zeros((n_nodes, n_slots), dtype=np.int32)
        self.gpu_memory_total = np.zeros((n_nodes, n_slots), dtype=np.int64)
        self.gpu_memory_free = np.zeros((n_nodes, n_slots), dtype=np.int64)
        self.cpu_total = np.zeros(n_nodes, dtype=np.int64)
        self.memory_total = np.zeros(n_nodes, dtype=np.int64)
        self.model_of = np.full((n_nodes, n_slots), -1, dtype=np.int32)
        self.models: list[str] = []
        self.pool_bits: dict[str, int] = {}
        self.pools_of = np.zeros((n_nodes, n_slots), dtype=np.int64)
        for row, node in enumerate(self.nodes):
            if node.name in self.node_index:
                raise ValueError(f"node {node.name!r} is listed twice")
            self.node_index[node.name] = row
            self.cpu_total[row] = node.cpu_milli
            self.memory_total[row] = node.memory_mib
            for slot, gpu in enumerate(node.gpus):
                if gpu.uuid in self.gpu_slot:
                    raise ValueError(f"GPU {gpu.uuid} is listed twice")
                self.gpu_slot[gpu.uuid] = (row, slot)
                self.present[row, slot] = True
                self.milli_free[row, slot] = MILLI_PER_GPU
                self.gpu_memory_total[row, slot] = gpu.memory_mib
                self.gpu_memory_free[row, slot] = gpu.memory_mib
                self.model_of[row, slot] = self._model_id(gpu.model)
                for pool in gpu.pools:
                    self.pools_of[row, slot] |= self._pool_bit(pool)
        self.cpu_free = self.cpu_total.copy()
        self.memory_free = self.memory_total.copy()
        self.gpu_milli_total = self.present.sum(axis=1).astype(np.int64) * MILLI_PER_GPU
        self.version = np.zeros(n_nodes, dtype=np.int64)
        self.total_gpus = int(self.present.sum())
        # Caches that policies keep against this state, keyed by the policy; they live and die
        # with the state, so a policy object can serve many clusters.
        self.policy_cache: dict[object, object] = {}
        self._eligible_cache: dict[tuple[frozenset[str], str | None], np.ndarray] = {}

    def _model_id(self, model: str) -> int:
        if model not in self.models:
            self.models.append(model)
        return self.models.index(model)

    def _pool_bit(self, pool: str) -> int:
        if pool not in self.pool_bits:
            self.pool_bits[pool] = 1 << len(self.pool_bits)
        return self.pool_bits[pool]

    # ----------------------------------------------------------------- views

    def eligible(self, gpu_models: frozenset[str], pool: str | None) -> np.ndarray:
        """GPU slots of an allowed model and pool, as an (nodes, slots) mask."""
        key = (gpu_models, pool)
        mask = self._eligible_cache.get(key)
        if mask is None:
            mask = self.present.copy()
            if gpu_models:
                ids = [self.models.index(model) for model in gpu_models if model in self.models]
                mask &= np.isin(self.model_of, ids)
            if pool is not None:
                mask &= (self.pools_of & self.pool_bits.get(pool, 0)) != 0
            mask.setflags(write=False)
            self._eligible_cache[key] = mask
        return mask

    def gpu_memory_need(self, request: SliceRequest) -> np.ndarray:
        """GPU memory the request takes on each slot: given, or following the fraction."""
        if request.gpu_memory_mib is not None:
            return np.full(self.present.shape, request.gpu_memory_mib, dtype=np.int64)
        return self.gpu_memory_total * request.per_gpu_milli // MILLI_PER_GPU

    def host_fits(self, request: SliceRequest) -> np.ndarray:
        """Nodes with enough free CPU and host memory for the request."""
        return (self.cpu_free >= request.cpu_milli) & (self.memory_free >= request.memory_mib)

    def slot_fits(self, request: SliceRequest) -> np.ndarray:
        """GPU slots that could take the request's share of one GPU, ignoring CPU and memory."""
        eligible = self.eligible(request.gpu_models, request.pool)
        if request.is_fractional:
            return (
                eligible
                & (self.milli_free >= request.milli_gpu)
                & (self.gpu_memory_free >= self.gpu_memory_need(request))
            )
        return eligible & (self.milli_free == MILLI_PER_GPU)

    def candidate_mask(self, request: SliceRequest) -> np.ndarray:
        """(nodes, slots) mask of where the request may go.

        For a fraction, each fitting slot is a candidate. For whole GPUs, the candidate of a node
        is the set of its first ``gpus`` fully free eligible slots (fully free slots are
        interchangeable); for CPU-only work, slot 0 of every node that fits stands for the node.
        """
        host_ok = self.host_fits(request)
        if not request.gpu_count:
            mask = np.zeros(self.present.shape, dtype=bool)
            mask[:, 0] = host_ok
            return mask
        fits = self.slot_fits(request) & host_ok[:, None]
        if request.is_fractional:
            return fits
        rank = np.cumsum(fits, axis=1)
        enough = rank[:, -1] >= request.gpus
        return fits & (rank <= request.gpus) & enough[:, None]

    def placement_for(self, row: int, slots: Sequence[int], request: SliceRequest) -> Placement:
        node = self.nodes[row]
        shares = tuple(
            GPUShare(
                gpu_uuid=node.gpus[slot].uuid,
                milli_gpu=request.per_gpu_milli,
                memory_mib=request.gpu_memory_on(node.gpus[slot]),
            )
            for slot in slots
        )
        return Placement(
            node=node.name, shares=shares, cpu_milli=request.cpu_milli, memory_mib=request.memory_mib
        )

    # --------------------------------------------------------------- changes

    def allocate(self, placement: Placement) -> None:
        """Take a placement's capacity; refuses (and changes nothing) if it does not fit."""
        self._apply(placement, sign=-1)

    def release(self, placement: Placement) -> None:
        """Give a placement's capacity back; refuses if that would exceed what the node has."""
        self._apply(placement, sign=+1)

    def _apply(self, placement: Placement, sign: int) -> None:
        row = self.node_index.get(placement.node)
        if row is None:
            raise CapacityError(f"unknown node {placement.node!r}")
        cells = []
        for share in placement.shares:
            where = self.gpu_slot.get(share.gpu_uuid)
            if where is None or where[0] != row:
                raise CapacityError(f"GPU {share.gpu_uuid} is not on node {placement.node}")
            cells.append((where[1], share))
        cpu = self.cpu_free[row] + sign * placement.cpu_milli
        memory = self.memory_free[row] + sign * placement.memory_mib
        if not (0 <= cpu <= self.cpu_total[row] and 0 <= memory <= self.memory_total[row]):
            raise CapacityError(f"CPU or memory of node {placement.node} would go out of bounds")
        milli = self.milli_free[row].copy()
        gpu_memory = self.gpu_memory_free[row].copy()
        for slot, share in cells:
            milli[slot] += sign * share.milli_gpu
            gpu_memory[slot] += sign * share.memory_mib
        if (milli < 0).any() or (milli > MILLI_PER_GPU).any():
            raise CapacityError(f"GPU milli of node {placement.node} would go out of bounds")
        if (gpu_memory < 0).any() or (gpu_memory > self.gpu_memory_total[row]).any():
            raise CapacityError(f"GPU memory of node {placement.node} would go out of bounds")
        self.milli_free[row] = milli
        self.gpu_memory_free[row] = gpu_memory
        self.cpu_free[row] = cpu
        self.memory_free[row] = memory
        self.version[row] += 1

    # -------------------------------------------------------------- figures

    @property
    def allocated_milli(self) -> int:
        return int(self.total_gpus * MILLI_PER_GPU - self.milli_free[self.present].sum())

    def allocation_ratio(self) -> float:
        if not self.total_gpus:
            return 0.0
        return self.allocated_milli / (self.total_gpus * MILLI_PER_GPU)

    def explain_no_fit(self, request: SliceRequest) -> str:
        """Why nothing fits, as a sentence a user can act on."""
        what = request.describe()
        pool = f"{request.pool} " if request.pool else ""
        eligible = self.eligible(request.gpu_models, request.pool)
        if request.gpu_count and not eligible.any():
            models = " or ".join(sorted(request.gpu_models)) or "any model"
            return f"no {pool}GPU of {models} exists in the inventory"
        if request.gpu_count > int(eligible.sum(axis=1).max(initial=0)):
            return f"no node has {request.gpu_count} {pool}GPUs of the allowed models"
        slot_ok = self.slot_fits(request)
        host_ok = self.host_fits(request)
        if request.gpu_count and not (slot_ok.sum(axis=1) >= request.gpu_count).any():
            free_gpus = int((eligible & (self.milli_free == MILLI_PER_GPU)).sum())
            most = int(self.milli_free[eligible].max(initial=0))
            if request.is_fractional:
                return (
                    f"no {pool}GPU has {describe_milli(request.milli_gpu)} of a GPU free for {what} "
                    f"(the emptiest has {describe_milli(most) if most else 'nothing'} free)"
                )
            wanted = "a whole" if request.gpus == 1 else f"{request.gpus} whole"
            plural = "" if request.gpus == 1 else "s"
            return (
                f"no node has {wanted} {pool}GPU{plural} free for {what} "
                f"({free_gpus} whole GPU{'' if free_gpus == 1 else 's'} free in the whole cluster)"
            )
        if not host_ok.any():
            return f"no node has {request.cpu_milli} milli-CPU and {request.memory_mib} MiB memory free"
        return f"no node has both the GPUs and the CPU/memory free for {what}"
