"""One sample of what the GPUs of this host are doing: per card, per process.

The monitor reads NVML every few seconds for the whole life of the service, so NVML is started
once (:class:`NvmlSampler`) rather than per sample, and each card's handle and uuid are asked for
once: on an 8-GPU host a sample is then 8 x 4 calls (memory, utilisation, processes, their
utilisation), the least that says what the issue asks for. Every call blocks in the driver, so
the sampler runs in a worker thread, never on the event loop.

Where the host has no GPU (the simulated demo inventory), nothing can be measured: the sample is
made from the ledger's allocations instead (:func:`allocation_sample`), every reading says so
(``measured=False``), and the pages print that the figures are allocations, not use.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import ModuleType

import pynvml

from spawner.core.units import MILLI_PER_GPU, Lease, Node

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ProcessReading:
    """One process holding GPU memory on one card, as NVML counts it.

    ``sm_percent`` is the process's share of the card's streaming multiprocessors over the last
    sampling window, or None where NVML keeps no per-process figures (older drivers, MIG).
    """

    pid: int
    gpu_uuid: str
    memory_mib: int
    sm_percent: int | None = None


@dataclass(frozen=True, slots=True)
class GPUReading:
    """One card: how busy it was and how much memory is in use.

    ``utilisation_percent`` is None where NVML has no whole-card figure (a card in MIG mode): such
    a card is left out of busy hours rather than counted idle.
    """

    uuid: str
    utilisation_percent: float | None
    memory_used_mib: int
    memory_total_mib: int
    measured: bool = True
    """False for a simulated GPU, whose figures are its allocation, not a measurement."""


@dataclass(frozen=True, slots=True)
class Sample:
    """Everything one poll read, at ``taken_at`` (Unix seconds)."""

    taken_at: float
    gpus: tuple[GPUReading, ...]
    processes: tuple[ProcessReading, ...] = ()
    measured: bool = True
    errors: tuple[str, ...] = field(default=())
    """NVML calls that failed in this sample (one card unreadable does not lose the others)."""

    def gpu(self, uuid: str) -> GPUReading | None:
        for reading in self.gpus:
            if reading.uuid == uuid:
                return reading
        return None


def _text(value: str | bytes) -> str:
    # nvidia-ml-py before 11.515 returned bytes; later versions return str.
    return value.decode() if isinstance(value, bytes) else value


class NvmlSampler:
    """Reads :class:`Sample` s from NVML, keeping NVML started between them (see the module's doc).

    ``library`` stands in for ``pynvml`` in tests and the benchmark (a faked NVML). Not for the
    event loop: every method blocks.
    """

    def __init__(self, library: ModuleType | None = None) -> None:
        self.nvml = pynvml if library is None else library
        self._started = False
        self._handles: list[tuple[object, str]] = []
        self._last_seen_us: dict[str, int] = {}
        self._lock = threading.Lock()

    def start(self) -> int:
        """Start NVML and learn the cards; returns how many. Raises ``NVMLError`` without a driver."""
        with self._lock:
            if not self._started:
                self.nvml.nvmlInit()
                self._started = True
                self._handles = []
                for index in range(self.nvml.nvmlDeviceGetCount()):
                    handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
                    self._handles.append((handle, _text(self.nvml.nvmlDeviceGetUUID(handle))))
            return len(self._handles)

    def stop(self) -> None:
        with self._lock:
            if self._started:
                self._started = False
                try:
                    self.nvml.nvmlShutdown()
                except self.nvml.NVMLError:
                    pass  # the driver releases NVML when the process exits anyway

    def read(self, now: float) -> Sample:
        """One sample of every card and every process on them."""
        self.start()
        gpus: list[GPUReading] = []
        processes: list[ProcessReading] = []
        errors: list[str] = []
        for handle, uuid in self._handles:
            try:
                gpus.append(self._read_gpu(handle, uuid))
                processes.extend(self._read_processes(handle, uuid))
            except self.nvml.NVMLError as error:
                errors.append(f"GPU {uuid}: {error}")
        return Sample(now, tuple(gpus), tuple(processes), measured=True, errors=tuple(errors))

    def _read_gpu(self, handle: object, uuid: str) -> GPUReading:
        nvml = self.nvml
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        percent: float | None
        try:
            percent = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except nvml.NVMLError_NotSupported:
            # A card in MIG mode has no whole-card figure; its processes' memory still counts.
            percent = None
        return GPUReading(uuid, percent, memory.used // MIB, memory.total // MIB)

    def _read_processes(self, handle: object, uuid: str) -> list[ProcessReading]:
        nvml = self.nvml
        memory_by_pid: dict[int, int] = {}
        # Under MPS the clients are listed apart from ordinary compute processes.
        for function in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetMPSComputeRunningProcesses"):
            try:
                running = getattr(nvml, function)(handle)
            except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound, AttributeError):
                continue
            for process in running:
                used = process.usedGpuMemory  # None where the driver cannot say (Windows WDDM)
                memory_by_pid[process.pid] = max(memory_by_pid.get(process.pid, 0), (used or 0) // MIB)
        if not memory_by_pid:
            return []
        sm_by_pid = self._process_utilisation(handle, uuid)
        return [
            ProcessReading(pid, uuid, memory_mib, sm_by_pid.get(pid) if sm_by_pid is not None else None)
            for pid, memory_mib in sorted(memory_by_pid.items())
        ]

    def _process_utilisation(self, handle: object, uuid: str) -> dict[int, int] | None:
        """Each process's SM share since the last sample of this card; None if NVML keeps none."""
        nvml = self.nvml
        try:
            samples = nvml.nvmlDeviceGetProcessUtilization(handle, self._last_seen_us.get(uuid, 0))
        except nvml.NVMLError_NotFound:
            return {}  # no process ran a kernel since the last sample
        except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound):
            return None
        by_pid: dict[int, int] = {}
        for sample in samples:
            by_pid[sample.pid] = max(by_pid.get(sample.pid, 0), int(sample.smUtil))
            self._last_seen_us[uuid] = max(self._last_seen_us.get(uuid, 0), int(sample.timeStamp))
        return by_pid


def allocation_sample(now: float, nodes: Sequence[Node], leases: Iterable[Lease]) -> Sample:
    """A sample of simulated GPUs, which do no work: each card is as busy as it is allocated.

    A card holding slices of 125 and 250 milli-GPU reads 37.5% busy, with its leases' memory in
    use. This is what lets the accounting, the pages and the dashboards be tried on a machine
    without a GPU; every reading is marked ``measured=False`` so that nothing presents it as use.
    """
    held_milli: dict[str, int] = {}
    held_memory: dict[str, int] = {}
    for lease in leases:
        for share in lease.placement.shares:
            held_milli[share.gpu_uuid] = held_milli.get(share.gpu_uuid, 0) + share.milli_gpu
            held_memory[share.gpu_uuid] = held_memory.get(share.gpu_uuid, 0) + share.memory_mib
    gpus = tuple(
        GPUReading(
            uuid=gpu.uuid,
            utilisation_percent=min(100.0, 100.0 * held_milli.get(gpu.uuid, 0) / MILLI_PER_GPU),
            memory_used_mib=min(gpu.memory_mib, held_memory.get(gpu.uuid, 0)),
            memory_total_mib=gpu.memory_mib,
            measured=False,
        )
        for node in nodes
        for gpu in node.gpus
    )
    return Sample(now, gpus, (), measured=False)
