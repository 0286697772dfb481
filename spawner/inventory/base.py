"""What every inventory source shares: the log, the labels stamped on nodes, pool names, the error.

Each source (NVML, static YAML, simulated, Kubernetes) turns a different truth into the same
``list[Node]``; keeping the vocabulary here stops the sources from drifting apart in how they name a
pool or say where a node came from.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from spawner.core.units import DEFAULT_POOLS

from .yaml_problems import ConfigFileError

log = logging.getLogger("gpuslice.inventory")

SOURCE_LABEL = "gpuslice.io/inventory-source"
"""Node label saying which source described the node, so pages can show "simulated" or "static"."""

POOL_LABEL = "gpuslice.io/pool"
"""Kubernetes node label an admin sets to put a node's GPUs in a pool: dev, train or both."""

KNOWN_POOLS = frozenset({"dev", "train"})
POOL_SPELLINGS = ("dev", "train", "both")


class InventoryConfigError(ConfigFileError):
    """An inventory the admin described cannot be used; ``errors`` lists every problem found."""

    subject = "the GPU inventory"


def parse_pools(value: str | Iterable[str]) -> frozenset[str]:
    """Pools from an admin's spelling: 'dev', 'train', 'both', or a list of 'dev'/'train'.

    Pool names are a closed set so that a typo such as 'trian' is refused at start-up rather than
    leaving a GPU in a pool nobody asks for.
    """
    if isinstance(value, str):
        if value == "both":
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
    """Which pools discovered GPUs join: a per-GPU choice (by uuid or index) first, then the default.

    NVML and simulated GPUs carry no pool of their own, so the admin's configuration decides.
    """

    default: frozenset[str] = DEFAULT_POOLS
    by_gpu: Mapping[str, frozenset[str]] = field(default_factory=dict, hash=False)

    def pools_for(self, index: int, uuid: str) -> frozenset[str]:
        return self.by_gpu.get(uuid) or self.by_gpu.get(str(index)) or self.default
