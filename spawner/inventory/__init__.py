"""Where GPUs come from: NVML on this host, a static YAML file, or simulated demo GPUs.

Every source answers with ``list[spawner.core.units.Node]``; :class:`Inventory` picks the source
from configuration. :mod:`.kube` reads Kubernetes Node objects the same way (source "kubernetes"),
and follows them by a watch while the service runs. Nothing here allocates: the allocator in
``spawner/service`` owns the GPUs.
"""

from .base import POOL_LABEL, SOURCE_LABEL, InventoryConfigError, PoolRule, describe_pools, parse_pools
from .gpu_names import normalise_model
from .inventory import Inventory
from .kube import nodes_from_kube, parse_quantity
from .nvml import GPUUtilisation, NvmlDevice, read_devices, read_utilisation
from .simulated import simulated_nodes
from .static import load_static, parse_static

__all__ = [
    "GPUUtilisation",
    "Inventory",
    "InventoryConfigError",
    "NvmlDevice",
    "POOL_LABEL",
    "PoolRule",
    "SOURCE_LABEL",
    "describe_pools",
    "load_static",
    "nodes_from_kube",
    "normalise_model",
    "parse_pools",
    "parse_quantity",
    "parse_static",
    "read_devices",
    "read_utilisation",
    "simulated_nodes",
]
