"""What every inventory source shares: the log, the labels stamped on nodes, pool names, the error.

Each source (NVML, static YAML, simulated; Kubernetes nodes in :mod:`.kube`) turns a different truth
into the same ``list[Node]``; keeping these words here stops the sources from drifting apart in how
they say where a node came from. The pool names themselves are :mod:`spawner.core.vocabulary`'s.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from spawner.config.yaml_problems import ConfigFileError
from spawner.core.units import DEFAULT_POOLS, Node
from spawner.core.vocabulary import POOLS, TRAIN_POOL

log = logging.getLogger("gpuslice.inventory")

SOURCE_LABEL = "gpuslice.io/inventory-source"
"""Node label saying which source described the node, so pages can show "simulated" or "static"."""

POOL_LABEL = "gpuslice.io/pool"
"""Kubernetes node label an admin sets to put a node's GPUs in a pool: dev, train or both."""

KNOWN_POOLS = frozenset(POOLS)
BOTH_POOLS = "both"
"""How an admin puts a GPU in every pool (in YAML, a node label or ``Inventory.gpu_pools``)."""


class InventoryConfigError(ConfigFileError):
    """An inventory the admin described cannot be used; ``errors`` lists every problem found."""

    subject = "the GPU inventory"


def parse_pools(value: str | Iterable[str]) -> frozenset[str]:
    """Pools from an admin's spelling: 'dev', 'train', 'both', or a list of 'dev'/'train'.

    Pool names are a closed set so that a typo such as 'trian' is refused at start-up rather than
    leaving a GPU in a pool nobody asks for.
    """
    if isinstance(value, str):
        if value == BOTH_POOLS:
            return KNOWN_POOLS
        if value in KNOWN_POOLS:
            return frozenset({value})
        raise ValueError(f"unknown pool {value!r}; expected 'dev', 'train' or 'both'")
    pools: frozenset[str] = frozenset()
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"unknown pool {item!r}; expected 'dev', 'train' or 'both'")
        pools |= parse_pools(item)
    if not pools:
        raise ValueError("a GPU must belong to at least one pool; expected 'dev', 'train' or 'both'")
    return pools


@dataclass(frozen=True)
class PoolRule:
    """Which pools discovered GPUs join: a per-GPU choice (by uuid or index) first, then the
    host's split between development and training, then the default.

    NVML and simulated GPUs carry no pool of their own, so the admin's configuration decides.
    ``train_share`` is the split a host gets when the admin named no GPU: the last
    ``floor(count * train_share)`` GPUs of the host (by index) train, the others are the default's.
    A host with one GPU keeps it for development, where batch jobs may still borrow it while idle.
    """

    default: frozenset[str] = DEFAULT_POOLS
    by_gpu: Mapping[str, frozenset[str]] = field(default_factory=dict, hash=False)
    train_share: float = 0.0

    def pools_for(self, index: int, uuid: str, position: int = 0, count: int = 1) -> frozenset[str]:
        """The pools of the GPU at ``position`` (0-based, in index order) of the host's ``count``."""
        chosen = self.by_gpu.get(uuid) or self.by_gpu.get(str(index))
        if chosen:
            return chosen
        if position >= count - math.floor(count * self.train_share + 1e-9):
            return frozenset({TRAIN_POOL})
        return self.default


def describe_pools(nodes: Iterable[Node]) -> str:
    """Which GPU is in which pool, for the start-up log: ``dev: a:0, a:1; train: a:2, a:3``.

    An admin reading the log of a fresh install learns there which cards notebooks slice and
    which the training queue runs on, without opening the admin page.
    """
    members: dict[str, list[str]] = {}
    for node in nodes:
        for gpu in node.gpus:
            for pool in sorted(gpu.pools):
                members.setdefault(pool, []).append(f"{node.name}:{gpu.index}")
    if not members:
        return "no GPU"
    return "; ".join(f"{pool}: {', '.join(names)}" for pool, names in sorted(members.items()))
