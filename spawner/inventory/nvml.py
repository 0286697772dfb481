"""GPUs of this host, as the NVIDIA driver reports them through NVML (nvidia-ml-py's ``pynvml``).

A machine without a driver is a normal case (a laptop trying the hub, a CPU-only login node), not a
fault: every NVML failure becomes one log line and an empty answer, and the caller decides whether
to fall back to a static or simulated inventory. NVML calls block, so the service uses the
``*_async`` variants, which run them in a thread off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

import pynvml

from spawner.core.units import GPU, Node

from . import host
from .base import SOURCE_LABEL, PoolRule, log
from .gpu_names import normalise_model

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class NvmlDevice:
    """What NVML says about one physical GPU, before pools are assigned.

    ``raw_name`` is kept beside the short ``model`` because admins and bug reports need the exact
    product string; ``mig_enabled`` matters to enforcement, since a card in MIG mode can only be
    used through its MIG instances.
    """

    index: int
    uuid: str
    raw_name: str
    model: str
    memory_mib: int
    mig_capable: bool
    mig_enabled: bool


@dataclass(frozen=True, slots=True)
class GPUUtilisation:
    """One reading of how busy a GPU is. ``gpu_percent`` is None where NVML cannot say (MIG mode)."""

    index: int
    uuid: str
    gpu_percent: int | None
    memory_used_mib: int
    memory_total_mib: int


class _NvmlFailure(Exception):
    """An NVML error, already turned into the sentence the log line will carry."""

    def __init__(self, reason: str, advice: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.advice = advice


def read_devices(*, library: ModuleType | None = None) -> list[NvmlDevice]:
    """Every GPU NVML sees, in NVML index order; [] (and one log line) if NVML fails.

    ``library`` stands in for ``pynvml`` (a module with its functions and errors), for tests.
    """
    return _guarded(_read_devices, library, "no NVIDIA GPU is discovered on this host")


def discover(
    *,
    node_name: str | None = None,
    pools: PoolRule | None = None,
    library: ModuleType | None = None,
) -> list[Node]:
    """This host as one node with its NVML GPUs, or [] when NVML is absent or sees no GPU."""
    devices = read_devices(library=library)
    if not devices:
        return []
    name = node_name or host.host_name()
    rule = pools or PoolRule()
    gpus = tuple(
        GPU(
            uuid=device.uuid,
            node=name,
            index=device.index,
            model=device.model,
            memory_mib=device.memory_mib,
            pools=rule.pools_for(device.index, device.uuid, position, len(devices)),
            mig_capable=device.mig_capable,
        )
        for position, device in enumerate(devices)  # read_devices gives NVML index order
    )
    node = Node(
        name=name,
        cpu_milli=host.cpu_milli(),
        memory_mib=host.memory_mib(),
        gpus=gpus,
        labels={SOURCE_LABEL: "nvml"},
    )
    return [node]


async def discover_async(
    *,
    node_name: str | None = None,
    pools: PoolRule | None = None,
    library: ModuleType | None = None,
) -> list[Node]:
    """:func:`discover` in a worker thread, so the tornado event loop keeps serving meanwhile."""
    return await asyncio.to_thread(discover, node_name=node_name, pools=pools, library=library)


def read_utilisation(*, library: ModuleType | None = None) -> list[GPUUtilisation]:
    """A snapshot of every GPU's load and memory use; [] if NVML fails. (Nothing in the service
    polls it yet: it is read by the GPU tests, and is what a utilisation monitor would call.)"""
    return _guarded(_read_utilisation, library, "GPU utilisation cannot be read on this host")


def _guarded(read, library, consequence: str):
    nvml = pynvml if library is None else library
    try:
        with _session(nvml):
            return read(nvml)
    except _NvmlFailure as failure:
        advice = f" {failure.advice}" if failure.advice else ""
        log.warning("%s; %s.%s", failure.reason, consequence, advice)
        return []


@contextmanager
def _session(nvml) -> Iterator[None]:
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as error:
        raise _init_failure(nvml, error) from error
    try:
        yield
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError as error:
            log.debug("nvmlShutdown failed (%s); the driver releases NVML when the process exits", error)


def _init_failure(nvml, error) -> _NvmlFailure:
    if isinstance(error, (nvml.NVMLError_LibraryNotFound, nvml.NVMLError_DriverNotLoaded)):
        return _NvmlFailure(
            f"NVML is not available ({error}: the NVIDIA driver is not installed or not loaded)",
            "Install the NVIDIA driver to use real GPUs, or set Inventory.source to 'static' or 'simulated'.",
        )
    return _NvmlFailure(f"NVML could not start ({error})")


def _call(nvml, function: str, *args, index: int | None = None):
    try:
        return getattr(nvml, function)(*args)
    except nvml.NVMLError as error:
        where = f" for GPU {index}" if index is not None else ""
        raise _NvmlFailure(f"NVML call {function}{where} failed ({error})") from error


def _text(value: str | bytes) -> str:
    # nvidia-ml-py before 11.515 returned bytes; later versions return str.
    return value.decode() if isinstance(value, bytes) else value


def _mig_mode(nvml, handle, index: int) -> tuple[bool, bool]:
    """(capable, enabled). Cards without MIG answer NotSupported, old drivers FunctionNotFound."""
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound):
        return False, False
    except nvml.NVMLError as error:
        raise _NvmlFailure(f"NVML call nvmlDeviceGetMigMode for GPU {index} failed ({error})") from error
    return True, current == nvml.NVML_DEVICE_MIG_ENABLE


def _read_devices(nvml) -> list[NvmlDevice]:
    devices = []
    for index in range(_call(nvml, "nvmlDeviceGetCount")):
        handle = _call(nvml, "nvmlDeviceGetHandleByIndex", index, index=index)
        raw_name = _text(_call(nvml, "nvmlDeviceGetName", handle, index=index))
        memory = _call(nvml, "nvmlDeviceGetMemoryInfo", handle, index=index)
        mig_capable, mig_enabled = _mig_mode(nvml, handle, index)
        devices.append(
            NvmlDevice(
                index=index,
                uuid=_text(_call(nvml, "nvmlDeviceGetUUID", handle, index=index)),
                raw_name=raw_name,
                model=normalise_model(raw_name),
                memory_mib=memory.total // MIB,
                mig_capable=mig_capable,
                mig_enabled=mig_enabled,
            )
        )
    return devices


def _read_utilisation(nvml) -> list[GPUUtilisation]:
    readings = []
    for index in range(_call(nvml, "nvmlDeviceGetCount")):
        handle = _call(nvml, "nvmlDeviceGetHandleByIndex", index, index=index)
        memory = _call(nvml, "nvmlDeviceGetMemoryInfo", handle, index=index)
        try:
            gpu_percent = nvml.nvmlDeviceGetUtilizationRates(handle).gpu
        except nvml.NVMLError_NotSupported:
            gpu_percent = None
        except nvml.NVMLError as error:
            raise _NvmlFailure(
                f"NVML call nvmlDeviceGetUtilizationRates for GPU {index} failed ({error})"
            ) from error
        readings.append(
            GPUUtilisation(
                index=index,
                uuid=_text(_call(nvml, "nvmlDeviceGetUUID", handle, index=index)),
                gpu_percent=gpu_percent,
                memory_used_mib=memory.used // MIB,
                memory_total_mib=memory.total // MIB,
            )
        )
    return readings
