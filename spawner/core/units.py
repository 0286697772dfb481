"""The units every part of gpuslice speaks: GPUs, nodes, slice requests, placements and leases.

They are plain frozen values so that the ledger, the service, the spawner and the simulator can pass
them around, hash them and compare them without any of them owning the others. A fraction of a GPU
is counted in milli-GPU (1000 = one whole GPU) so that arithmetic stays exact in integers.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .vocabulary import DEV_POOL

MILLI_PER_GPU = 1000
"""One whole GPU, in milli-GPU."""

DEFAULT_POOLS = frozenset({DEV_POOL})
"""Where a GPU goes when nothing says otherwise: notebooks slice it (and idle, batch jobs borrow it)."""

SIMULATED_UUID_PREFIX = "GPU-sim-"
"""How every simulated demo GPU's uuid begins, so that whatever holds only a uuid (a lease, a
server's environment) still tells a demo GPU from a real one."""


class SliceRequestError(ValueError):
    """A slice request that no GPU could ever satisfy because it is malformed."""


class WorkloadClass(str, enum.Enum):
    """The two classes of workload the one allocator serves (see DESIGN.md)."""

    interactive = "interactive"
    batch = "batch"


@dataclass(frozen=True, slots=True)
class GPU:
    """One physical GPU (or one simulated demo GPU) as the allocator knows it."""

    uuid: str
    node: str
    index: int
    model: str
    memory_mib: int
    pools: frozenset[str] = DEFAULT_POOLS
    mig_capable: bool = False
    simulated: bool = False

    def __post_init__(self) -> None:
        if not self.uuid:
            raise ValueError("a GPU needs a uuid")
        if self.index < 0:
            raise ValueError(f"GPU {self.uuid}: index must be >= 0, got {self.index}")
        if self.memory_mib <= 0:
            raise ValueError(f"GPU {self.uuid}: memory_mib must be > 0, got {self.memory_mib}")
        if not self.pools:
            raise ValueError(f"GPU {self.uuid}: it must belong to at least one pool")
        object.__setattr__(self, "pools", frozenset(self.pools))

    @property
    def label(self) -> str:
        """The model as people should see it: a simulated demo GPU always says so.

        ``model`` itself stays the plain name, so that a profile asking for "A100-80GB" matches
        the demo A100s of the quick start exactly as it would match real ones.
        """
        return f"{self.model} (simulated)" if self.simulated else self.model


@dataclass(frozen=True, slots=True)
class Node:
    """A machine: its CPU and memory capacity, its GPUs and its labels."""

    name: str
    cpu_milli: int
    memory_mib: int
    gpus: tuple[GPU, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cpu_milli < 0 or self.memory_mib < 0:
            raise ValueError(f"node {self.name}: cpu_milli and memory_mib must be >= 0")
        gpus = tuple(sorted(self.gpus, key=lambda gpu: gpu.index))
        for gpu in gpus:
            if gpu.node != self.name:
                raise ValueError(f"GPU {gpu.uuid} says node {gpu.node!r} but is listed on {self.name!r}")
        if len({gpu.index for gpu in gpus}) != len(gpus):
            raise ValueError(f"node {self.name}: two GPUs share an index")
        object.__setattr__(self, "gpus", gpus)
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    def __reduce__(self):
        # The read-only labels view cannot be pickled; rebuild it, so nodes cross process pools.
        return (Node, (self.name, self.cpu_milli, self.memory_mib, self.gpus, dict(self.labels)))


@dataclass(frozen=True, slots=True)
class SliceRequest:
    """What a server or a job asks for.

    Either a fraction of one GPU (``milli_gpu`` in 1..1000, on one GPU) or ``gpus`` whole GPUs on
    one node (a gang), or neither for CPU-only work. GPU memory follows the fraction unless
    ``gpu_memory_mib`` is given, so 1/8 of an 80 GB card is 10 GB.
    """

    milli_gpu: int = 0
    gpus: int = 0
    gpu_memory_mib: int | None = None
    cpu_milli: int = 0
    memory_mib: int = 0
    gpu_models: frozenset[str] = frozenset()
    pool: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpu_models", frozenset(self.gpu_models))
        if self.milli_gpu and self.gpus:
            raise SliceRequestError(
                "ask for either milli_gpu (a fraction of one GPU) or gpus (whole GPUs), not both"
            )
        if not 0 <= self.milli_gpu <= MILLI_PER_GPU:
            raise SliceRequestError(
                f"milli_gpu must be between 1 and {MILLI_PER_GPU} (one whole GPU), got {self.milli_gpu}"
            )
        if self.gpus < 0:
            raise SliceRequestError(f"gpus must be 0 or more, got {self.gpus}")
        if self.cpu_milli < 0 or self.memory_mib < 0:
            raise SliceRequestError("cpu_milli and memory_mib must be 0 or more")
        if self.gpu_memory_mib is not None:
            if self.gpu_memory_mib <= 0:
                raise SliceRequestError(f"gpu_memory_mib must be > 0, got {self.gpu_memory_mib}")
            if not self.gpu_count:
                raise SliceRequestError("gpu_memory_mib needs milli_gpu or gpus")
        if self.milli_gpu == MILLI_PER_GPU:
            # A whole GPU asked as a fraction is the same request as gpus=1; keep one spelling so
            # that equal requests compare and hash equal.
            object.__setattr__(self, "milli_gpu", 0)
            object.__setattr__(self, "gpus", 1)

    @classmethod
    def fraction(cls, numerator: int, denominator: int, **kwargs) -> SliceRequest:
        """A slice of ``numerator/denominator`` of one GPU, e.g. ``fraction(1, 8)``."""
        if denominator <= 0 or numerator <= 0 or numerator > denominator:
            raise SliceRequestError(f"{numerator}/{denominator} is not a fraction of one GPU")
        return cls(milli_gpu=MILLI_PER_GPU * numerator // denominator, **kwargs)

    @property
    def is_fractional(self) -> bool:
        return self.milli_gpu > 0

    @property
    def gpu_count(self) -> int:
        """How many distinct GPUs the request touches."""
        return 1 if self.milli_gpu else self.gpus

    @property
    def per_gpu_milli(self) -> int:
        """Milli-GPU taken on each GPU the request touches."""
        if self.milli_gpu:
            return self.milli_gpu
        return MILLI_PER_GPU if self.gpus else 0

    @property
    def total_milli(self) -> int:
        return self.gpu_count * self.per_gpu_milli

    def gpu_memory_on(self, gpu: GPU) -> int:
        """GPU memory (MiB) this request takes on ``gpu``: given, or following the fraction."""
        if not self.gpu_count:
            return 0
        if self.gpu_memory_mib is not None:
            return self.gpu_memory_mib
        return gpu.memory_mib * self.per_gpu_milli // MILLI_PER_GPU

    def allows(self, gpu: GPU) -> bool:
        """Whether ``gpu`` is of an allowed model and in the requested pool."""
        if self.gpu_models and gpu.model not in self.gpu_models:
            return False
        return self.pool is None or self.pool in gpu.pools

    def describe(self) -> str:
        """A short human phrase: '1/8 GPU', '2 GPUs', 'CPU only'."""
        if self.milli_gpu:
            text = describe_milli(self.milli_gpu) + " GPU"
        elif self.gpus:
            text = f"{self.gpus} GPU" + ("s" if self.gpus > 1 else "")
        else:
            return "CPU only"
        if self.gpu_models:
            text += " (" + " or ".join(sorted(self.gpu_models)) + ")"
        return text


def describe_milli(milli_gpu: int) -> str:
    """'1/8' for 125, '1/4' for 250, '0.32' otherwise: how people name slices."""
    for denominator in (1, 2, 3, 4, 8, 16):
        if milli_gpu * denominator % MILLI_PER_GPU == 0:
            numerator = milli_gpu * denominator // MILLI_PER_GPU
            return str(numerator) if denominator == 1 else f"{numerator}/{denominator}"
    return f"{milli_gpu / MILLI_PER_GPU:.3g}"


def describe_size(size: int) -> str:
    """Bytes as people read them: ``2.3 MiB``, ``1 MiB``, ``512 KiB``, ``12 bytes``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


@dataclass(frozen=True, slots=True)
class GPUShare:
    """The part of one GPU that a placement takes."""

    gpu_uuid: str
    milli_gpu: int
    memory_mib: int


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a request goes: one node, and the share of each GPU it takes there."""

    node: str
    shares: tuple[GPUShare, ...]
    cpu_milli: int = 0
    memory_mib: int = 0

    @property
    def gpu_uuids(self) -> tuple[str, ...]:
        return tuple(share.gpu_uuid for share in self.shares)

    @property
    def total_milli(self) -> int:
        return sum(share.milli_gpu for share in self.shares)


@dataclass(frozen=True, slots=True)
class Lease:
    """One grant of a placement to one holder (a server or a job), under a durable id.

    The id is chosen by the caller (an idempotency key) so that a retry after a crash finds the
    lease it already holds instead of taking a second one.
    """

    id: str
    holder: str
    user: str
    group: str | None
    workload: WorkloadClass
    request: SliceRequest
    placement: Placement
    created_at: float
    preemptible: bool = False

    @property
    def total_milli(self) -> int:
        return self.placement.total_milli


def gpus_by_uuid(nodes: Iterable[Node]) -> dict[str, GPU]:
    return {gpu.uuid: gpu for node in nodes for gpu in node.gpus}
