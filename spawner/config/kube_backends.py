"""How each GPU pool turns a slice into Kubernetes resources: the ``kubernetes:`` mapping of the profiles.

On one machine gpuslice holds a slice to its size itself (:mod:`spawner.enforce`). On Kubernetes
the node's device plugin or scheduler does, and clusters differ in which one they run, so the admin
names a *back-end* per GPU pool in any profiles file::

    kubernetes:
      pools:
        dev:   {backend: mig}        # NVIDIA MIG, mixed strategy: nvidia.com/mig-1g.10gb
        train: {backend: pinned}     # whole GPUs chosen by gpuslice's allocator

The back-ends:

- ``mig``: the slice becomes the smallest MIG instance of its card that holds at least its compute
  share and its memory (``nvidia.com/mig-<profile>``); a size no MIG profile of the card can hold,
  or a card without MIG, is refused at ``gpuslice profiles check``, not at spawn time;
- ``shared``: the NVIDIA device plugin's time-slicing or MPS replicas, ``shared_replicas`` per GPU
  advertised as ``shared_resource``; a slice asks for its share of the replicas. Under
  time-slicing memory is not isolated: the form says so;
- ``hami``: HAMi's ``nvidia.com/gpu`` with ``nvidia.com/gpumem`` (MiB) and ``nvidia.com/gpucores``
  (percent of the card's cores);
- ``kai``: KAI-scheduler's ``gpu-fraction`` (or ``gpu-memory``) annotation, its scheduler name and
  queue label; KAI enforces no memory limit unless its isolator is installed: the form says so;
- ``pinned``: gpuslice's own placement, node and GPU UUID chosen by the allocator, for clusters
  whose device plugin passes the device a pod names in ``NVIDIA_VISIBLE_DEVICES``.

Pure: no I/O. :mod:`spawner.config.profiles` reads the mapping and checks every profile against it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

BACKENDS = ("mig", "shared", "hami", "kai", "pinned")
"""The slice back-ends, in the order the docs list them."""

DEFAULT_BACKEND = "pinned"
"""A pool nobody configured keeps gpuslice's own placement: the one back-end needing nothing
installed beyond the device plugin, and the one that does exactly what the allocator decided."""

DEFAULT_SHARED_RESOURCE = "nvidia.com/gpu.shared"
"""The resource the NVIDIA device plugin advertises for time-sliced or MPS replicas when it renames
them (``renameByDefault: true``), so that a pod asking for a whole GPU never gets a share."""

DEFAULT_SHARED_REPLICAS = 8
DEFAULT_KAI_SCHEDULER = "kai-scheduler"
DEFAULT_KAI_QUEUE = "default-queue"
KAI_QUEUE_LABEL = "kai.scheduler/queue"

BACKEND_CAVEATS = {
    "shared": "GPU memory is not isolated under time-slicing: another server on the card can use it up.",
    "kai": "KAI-scheduler enforces no GPU memory limit unless its isolator is installed.",
}
"""What a user should know before choosing a slice of these back-ends, shown in the form."""


@dataclass(frozen=True, slots=True)
class MigProfile:
    """One MIG instance shape of a card: ``compute`` of its ``slots`` compute slices, ``memory_gb``."""

    name: str
    compute: int
    slots: int
    memory_gb: int

    @property
    def milli_gpu(self) -> int:
        """The instance's share of the card's compute, rounded down (1g of 7 = 142)."""
        return self.compute * 1000 // self.slots

    @property
    def memory_mib(self) -> int:
        """The memory the name promises, as profiles count it (10gb = 10240 MiB)."""
        return self.memory_gb * 1024

    @property
    def resource(self) -> str:
        """The extended resource the device plugin's mixed strategy advertises for it."""
        return f"nvidia.com/mig-{self.name}"


def _shapes(slots: int, *names: str) -> tuple[MigProfile, ...]:
    shapes = []
    for name in names:
        compute, memory = name.split("g.")
        shapes.append(MigProfile(name, int(compute), slots, int(memory.removesuffix("gb"))))
    return tuple(shapes)


MIG_PROFILES: Mapping[str, tuple[MigProfile, ...]] = MappingProxyType(
    {
        # Model names as spawner.inventory.gpu_names.normalise_model spells them; shapes from
        # NVIDIA's MIG user guide ("Supported MIG Profiles"), smallest first.
        "A30-24GB": _shapes(4, "1g.6gb", "2g.12gb", "4g.24gb"),
        "A100-40GB": _shapes(7, "1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"),
        "A100-80GB": _shapes(7, "1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
        "H100-80GB": _shapes(7, "1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
        "H100 NVL": _shapes(7, "1g.12gb", "1g.24gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb"),
        "H200": _shapes(7, "1g.18gb", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"),
        "B200": _shapes(7, "1g.23gb", "1g.45gb", "2g.45gb", "3g.90gb", "4g.90gb", "7g.180gb"),
    }
)
"""MIG shapes by GPU model. A card not listed has no MIG (T4, L4, V100, consumer cards)."""


def card_memory_mib(model: str) -> int | None:
    """The memory of a MIG-capable card, from its largest (whole-card) shape."""
    shapes = MIG_PROFILES.get(model)
    return shapes[-1].memory_mib if shapes else None


def mig_profile_for(model: str, milli_gpu: int, gpu_memory_mib: int | None = None) -> MigProfile | None:
    """The smallest MIG instance of ``model`` holding at least ``milli_gpu`` and the slice's memory.

    At least, never nearest: a slice promised 1/2 of a card must not get 3 of 7 compute slices.
    Memory follows the fraction of the card when the profile does not fix it (DESIGN.md, "Units").
    None when the card has no MIG or no shape is big enough: the profile cannot run on this pool.
    """
    shapes = MIG_PROFILES.get(model)
    if not shapes:
        return None
    memory = gpu_memory_mib
    if memory is None:
        memory = math.ceil(shapes[-1].memory_mib * milli_gpu / 1000)
    fitting = [
        shape
        for shape in shapes
        if shape.compute * 1000 >= milli_gpu * shape.slots and shape.memory_mib >= memory
    ]
    return min(fitting, key=lambda shape: (shape.compute, shape.memory_gb), default=None)


@dataclass(frozen=True, slots=True)
class PoolBackend:
    """How the GPUs of one pool are sliced on Kubernetes, and where its pods go."""

    backend: str = DEFAULT_BACKEND
    shared_resource: str = DEFAULT_SHARED_RESOURCE
    shared_replicas: int = DEFAULT_SHARED_REPLICAS
    kai_scheduler: str = DEFAULT_KAI_SCHEDULER
    kai_queue: str = DEFAULT_KAI_QUEUE
    kai_by_memory: bool = False
    """Ask KAI for ``gpu-memory`` (MiB) rather than ``gpu-fraction`` when the profile fixes memory."""
    node_selector: Mapping[str, str] = field(default_factory=dict, hash=False)
    tolerations: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown back-end {self.backend!r}; expected one of {', '.join(BACKENDS)}")
        object.__setattr__(self, "node_selector", MappingProxyType(dict(self.node_selector)))
        object.__setattr__(self, "tolerations", tuple(MappingProxyType(dict(t)) for t in self.tolerations))

    def with_backend(self, backend: str) -> PoolBackend:
        """The same pool settings under another back-end (``gpuslice k8s render --backend``)."""
        return PoolBackend(
            backend=backend,
            shared_resource=self.shared_resource,
            shared_replicas=self.shared_replicas,
            kai_scheduler=self.kai_scheduler,
            kai_queue=self.kai_queue,
            kai_by_memory=self.kai_by_memory,
            node_selector=self.node_selector,
            tolerations=self.tolerations,
        )


@dataclass(frozen=True)
class KubeSettings:
    """The ``kubernetes:`` mapping: a back-end per pool; pools not named get :data:`DEFAULT_BACKEND`."""

    pools: Mapping[str, PoolBackend] = field(default_factory=dict)
    pool_label: str = "gpuslice.io/pool"
    """The node label naming a node's pool(s), as :mod:`spawner.inventory.kube` reads it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "pools", MappingProxyType(dict(self.pools)))

    def for_pool(self, pool: str) -> PoolBackend:
        return self.pools.get(pool) or PoolBackend()


def kube_settings(document: Mapping[str, Any]) -> KubeSettings:
    """:class:`KubeSettings` from a schema-valid ``kubernetes:`` mapping."""
    pools = {}
    for name, entry in (document.get("pools") or {}).items():
        pools[name] = PoolBackend(
            backend=entry.get("backend", DEFAULT_BACKEND),
            shared_resource=entry.get("shared_resource", DEFAULT_SHARED_RESOURCE),
            shared_replicas=int(entry.get("shared_replicas", DEFAULT_SHARED_REPLICAS)),
            kai_scheduler=entry.get("kai_scheduler", DEFAULT_KAI_SCHEDULER),
            kai_queue=entry.get("kai_queue", DEFAULT_KAI_QUEUE),
            kai_by_memory=bool(entry.get("kai_by_memory", False)),
            node_selector=dict(entry.get("node_selector") or {}),
            tolerations=tuple(entry.get("tolerations") or ()),
        )
    return KubeSettings(pools=pools, pool_label=document.get("pool_label", "gpuslice.io/pool"))


def mig_problem(model_names: tuple[str, ...], milli_gpu: int, gpu_memory_mib: int | None) -> str | None:
    """Why a fractional profile cannot run on a ``mig`` pool, or None when every model it names can."""
    if not model_names:
        return (
            "a profile on a MIG pool must name its gpu_models, so that its slice maps to a MIG "
            f"profile of that card (MIG cards: {', '.join(MIG_PROFILES)})"
        )
    for model in model_names:
        if model not in MIG_PROFILES:
            return (
                f"{model} has no MIG, so a {milli_gpu}/1000 slice cannot run on a MIG pool; "
                f"use a MIG card ({', '.join(MIG_PROFILES)}) or another back-end for this pool"
            )
        if mig_profile_for(model, milli_gpu, gpu_memory_mib) is None:
            shapes = ", ".join(shape.name for shape in MIG_PROFILES[model])
            memory = f" with {gpu_memory_mib} MiB" if gpu_memory_mib is not None else ""
            return f"no MIG profile of {model} ({shapes}) holds a {milli_gpu}/1000 slice{memory}"
    return None
