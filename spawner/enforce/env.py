"""The environment of a notebook server holding a lease: which GPUs it sees and how much of them.

``CUDA_VISIBLE_DEVICES`` names the granted GPUs by UUID, which stays right when indices differ
between the driver, NVML and the hub (``CUDA_DEVICE_ORDER=PCI_BUS_ID`` keeps the in-process order
the same as ``nvidia-smi``'s). Frameworks do not read a slice size from anywhere, so each is told
in its own words: JAX/XLA by ``XLA_PYTHON_CLIENT_MEM_FRACTION``, TensorFlow by growing on demand
instead of taking the whole card, PyTorch by :mod:`spawner.enforce.kernel` at kernel start.

With CUDA MPS (``enforcement = "mps"``) the limits are enforced by the MPS server rather than
requested politely: ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` caps the share of SMs and
``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` caps device memory per GPU. The NVIDIA MPS documentation
(section "Environment Variables") gives the latter as a comma-separated list of
``<device>=<limit>`` pairs such as ``0=1G,1=512M``, where the device is the CUDA ordinal the client
sees, i.e. the position in ``CUDA_VISIBLE_DEVICES``, so that is what is written here, in MiB.

Where the service runs a control daemon per shared card (``MPSDaemons.pools``, given to the hub as
:class:`CardDaemons`), a server holding a slice of such a card is pointed at that card's daemon
(:func:`spawner.enforce.mps.card_directories`), whose limits the service sets and the user cannot
unset; elsewhere the host-wide pair of directories (``enforcement = "mps"``) or none is used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from spawner.core.units import MILLI_PER_GPU, SIMULATED_UUID_PREFIX
from spawner.enforce.mps import MPSDirectories, card_directories, has_card_daemon

ENFORCEMENT_MODES = ("env", "mps")
KERNELS_RESOURCE = "jupyter_data"
"""A Jupyter data directory inside this package whose ``kernels/python3`` loads the kernel limits
(:mod:`spawner.enforce.kernel`) and the ``%%submit`` magics (:mod:`spawner.magic`)."""


@dataclass(frozen=True)
class CardDaemons:
    """The pools whose shared cards each have an MPS control daemon of the service's own
    (``MPSDaemons.pools``) and the directory their pipes and logs are under (``MPSDaemons.root``)."""

    pools: frozenset[str]
    root: str


def is_simulated(gpu_uuid: str) -> bool:
    """Whether a GPU is one of the simulated demo GPUs, which do no real work."""
    return gpu_uuid.startswith(SIMULATED_UUID_PREFIX)


def kernels_data_dir() -> str:
    """The Jupyter data directory holding the python3 kernelspec that applies the slice's limits."""
    return str(resources.files("spawner.enforce").joinpath(KERNELS_RESOURCE))


def memory_fraction(lease: Mapping[str, Any], gpu_memory_mib: Mapping[str, int]) -> float:
    """The share of each card's memory the lease grants: the smallest over its GPUs.

    Memory over the card's total when the inventory knows it (a profile may fix a slice's memory
    apart from its compute share); the compute share otherwise.
    """
    fractions = []
    for share in lease["shares"]:
        total = gpu_memory_mib.get(share["gpu_uuid"])
        if total and share.get("memory_mib"):
            fractions.append(share["memory_mib"] / total)
        else:
            fractions.append(share["milli_gpu"] / MILLI_PER_GPU)
    return min(1.0, min(fractions)) if fractions else 0.0


def slice_environment(
    lease: Mapping[str, Any],
    *,
    profile: str,
    gpus: Iterable[Mapping[str, Any]] = (),
    service_url: str = "",
    enforcement: str = "env",
    mps: MPSDirectories | None = None,
    card_daemons: CardDaemons | None = None,
) -> dict[str, str]:
    """The variables a server holding ``lease`` (the REST API's JSON) starts with.

    ``gpus`` are the service's GPU models (``GET gpus``), used for each card's total memory, its
    pools and whether it is simulated; without them the memory fraction follows the compute share
    and the simulated flag follows the uuid. A slice of a card with its own daemon
    (``card_daemons``) gets that daemon's directories and MPS client limits whatever
    ``enforcement`` says; other leases get the host-wide ``mps`` directories under
    ``enforcement = "mps"`` and no MPS variables under ``"env"``.
    """
    if enforcement not in ENFORCEMENT_MODES:
        raise ValueError(f"enforcement must be one of {', '.join(ENFORCEMENT_MODES)}, got {enforcement!r}")
    shares = list(lease["shares"])
    if not shares:
        raise ValueError(f"lease {lease['id']} holds no GPU; a CPU-only server needs no slice environment")
    known = {gpu["uuid"]: gpu for gpu in gpus}
    uuids = [share["gpu_uuid"] for share in shares]
    milli = sum(share["milli_gpu"] for share in shares)
    memory_mib = sum(share["memory_mib"] for share in shares)
    fraction = memory_fraction(lease, {uuid: gpu["memory_mib"] for uuid, gpu in known.items()})
    env = {
        "CUDA_VISIBLE_DEVICES": ",".join(uuids),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "GPUSLICE_LEASE_ID": lease["id"],
        "GPUSLICE_PROFILE": profile,
        # The share, summed over the GPUs (125: 1/8 of one; 2000: two whole), and how many GPUs
        # the server sees: 1 for a slice of one GPU, as torch.cuda.device_count() will say.
        "GPUSLICE_MILLI_GPU": str(milli),
        "GPUSLICE_GPUS": str(len(uuids)),
        "GPUSLICE_GPU_MEMORY_MIB": str(memory_mib),
        "GPUSLICE_GPU_UUIDS": ",".join(uuids),
        "GPUSLICE_NODE": lease["node"],
        "GPUSLICE_MEMORY_FRACTION": f"{fraction:.4f}",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{_two_decimals_down(fraction):.2f}",
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
    }
    if service_url:
        env["GPUSLICE_SERVICE_URL"] = service_url
    if any(known.get(uuid, {}).get("simulated", is_simulated(uuid)) for uuid in uuids):
        env["GPUSLICE_SIMULATED"] = "1"
    daemon = card_daemon(shares, known, card_daemons)
    if daemon is not None:
        env.update(mps_environment(shares, daemon))
    elif enforcement == "mps":
        env.update(mps_environment(shares, mps))
    return env


def card_daemon(
    shares: list[Mapping[str, Any]],
    gpus: Mapping[str, Mapping[str, Any]],
    card_daemons: CardDaemons | None,
) -> MPSDirectories | None:
    """The directories of the daemon of the card a slice is on, if the service runs one for it.

    The service says so per card (``GET gpus``: ``mps_daemon``); a card in an MPS pool without a
    daemon there (not found by NVML, no control program) gets no MPS variables, since a client
    sent to a pipe no daemon listens on fails to start CUDA at all. Only a fraction of one card is
    sent there. A client reaches one daemon (one
    ``CUDA_MPS_PIPE_DIRECTORY``) and each daemon sees one card, so a lease of several cards cannot
    use them; and a whole card is shared with no one, while the daemon's default limits are those
    of the smallest slice. A card missing from ``gpus`` is not known to be in an MPS pool.
    """
    if card_daemons is None or len(shares) != 1 or shares[0]["milli_gpu"] >= MILLI_PER_GPU:
        return None
    uuid = shares[0]["gpu_uuid"]
    gpu = gpus.get(uuid)
    if gpu is None:
        return None
    simulated = bool(gpu.get("simulated", is_simulated(uuid)))
    if not has_card_daemon(gpu.get("pools", ()), simulated=simulated, mps_pools=card_daemons.pools):
        return None
    if gpu.get("mps_daemon") is not True:
        return None
    return card_directories(card_daemons.root, uuid)


def mps_environment(shares: list[Mapping[str, Any]], mps: MPSDirectories | None) -> dict[str, str]:
    """The CUDA MPS client limits for ``shares``: SM percentage and pinned device memory per GPU.

    The thread percentage is one figure for all of a client's GPUs, so it is the largest share's,
    rounded up (a 1/8 slice gets 13%, not 12%, so that eight slices can still each start).
    """
    if mps is None:
        raise ValueError('enforcement "mps" needs the MPS pipe and log directories')
    largest = max(share["milli_gpu"] for share in shares)
    limits = ",".join(f"{ordinal}={share['memory_mib']}M" for ordinal, share in enumerate(shares))
    return {
        "CUDA_MPS_PIPE_DIRECTORY": mps.pipe_directory,
        "CUDA_MPS_LOG_DIRECTORY": mps.log_directory,
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(math.ceil(largest / 10)),
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": limits,
    }


def with_kernel_limits(env: Mapping[str, str], inherited_jupyter_path: str = "") -> dict[str, str]:
    """``env`` plus ``JUPYTER_PATH`` led by this package's kernelspec, so kernels apply the limits.

    The same kernelspec loads ``spawner.magic``, so ``%%submit`` works without ``%load_ext``.
    """
    paths = [kernels_data_dir()] + [part for part in inherited_jupyter_path.split(":") if part]
    return {**env, "JUPYTER_PATH": ":".join(paths)}


def _two_decimals_down(fraction: float) -> float:
    """0.125 -> 0.12: a framework told to take a share must never be told more than the slice.

    The small epsilon keeps exact hundredths (0.29, whose float is 0.28999...) from losing one.
    """
    return math.floor(fraction * 100 + 1e-9) / 100
