"""A faked NVML (stands in for ``pynvml`` where there is no GPU): cards, their processes, their load.

Only the GPU is faked: the processes it lists are real processes of this machine (the tests start
them), so the mapping of processes to leases walks a real process tree.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from types import SimpleNamespace

import pynvml

MIB = 1024 * 1024


@dataclass
class FakeCard:
    uuid: str
    memory_total_mib: int = 81920
    gpu_percent: int | None = 0
    """None: no whole-card figure (a card in MIG mode answers NotSupported)."""
    processes: dict[int, int] = field(default_factory=dict)
    """pid -> GPU memory MiB the process holds on this card."""
    sm_percent: dict[int, int] | None = field(default_factory=dict)
    """pid -> SM share; None: this card keeps no per-process utilisation (NotSupported)."""


class FakeNvml(types.ModuleType):
    """The calls :class:`spawner.service.telemetry.readings.NvmlSampler` makes, with pynvml's errors."""

    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVMLError_FunctionNotFound = pynvml.NVMLError_FunctionNotFound
    NVMLError_NotFound = pynvml.NVMLError_NotFound

    def __init__(self, cards: list[FakeCard]) -> None:
        super().__init__("fake_pynvml")
        self.cards = cards
        self.initialised = 0
        self.calls = 0

    def nvmlInit(self) -> None:
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.cards)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeCard:
        return self.cards[index]

    def nvmlDeviceGetUUID(self, card: FakeCard) -> str:
        return card.uuid

    def nvmlDeviceGetMemoryInfo(self, card: FakeCard) -> SimpleNamespace:
        self.calls += 1
        used = sum(card.processes.values()) * MIB
        total = card.memory_total_mib * MIB
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetUtilizationRates(self, card: FakeCard) -> SimpleNamespace:
        self.calls += 1
        if card.gpu_percent is None:
            raise pynvml.NVMLError_NotSupported()
        return SimpleNamespace(gpu=card.gpu_percent, memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, card: FakeCard) -> list[SimpleNamespace]:
        self.calls += 1
        return [SimpleNamespace(pid=pid, usedGpuMemory=mib * MIB) for pid, mib in card.processes.items()]

    def nvmlDeviceGetMPSComputeRunningProcesses(self, card: FakeCard) -> list[SimpleNamespace]:
        self.calls += 1
        return []

    def nvmlDeviceGetProcessUtilization(self, card: FakeCard, last_seen_us: int) -> list[SimpleNamespace]:
        self.calls += 1
        if card.sm_percent is None:
            raise pynvml.NVMLError_NotSupported()
        if not card.sm_percent:
            raise pynvml.NVMLError_NotFound()
        return [
            SimpleNamespace(pid=pid, smUtil=share, memUtil=0, timeStamp=last_seen_us + 1)
            for pid, share in card.sm_percent.items()
        ]
