"""Fixtures for the inventory tests: a fake NVML library, a fixed host, the inventory log."""

from __future__ import annotations

import logging
import threading
import types
from dataclasses import dataclass, field
from types import SimpleNamespace

import pynvml
import pytest

from spawner.inventory import host
from spawner.inventory import nvml as nvml_source

MIB = 1024 * 1024


@dataclass
class FakeDevice:
    """One GPU as the fake NVML reports it. ``mig_mode`` None: the card has no MIG."""

    uuid: str
    name: str | bytes
    memory_total_mib: int
    memory_used_mib: int = 0
    mig_mode: int | None = None
    gpu_percent: int = 0
    failing: dict[str, type[pynvml.NVMLError]] = field(default_factory=dict)
    """NVML function name -> error class that call raises for this device."""


class FakeNvml(types.ModuleType):
    """Stands in for the ``pynvml`` module, with pynvml's real error classes and constants."""

    NVMLError = pynvml.NVMLError
    NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound
    NVMLError_DriverNotLoaded = pynvml.NVMLError_DriverNotLoaded
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVMLError_FunctionNotFound = pynvml.NVMLError_FunctionNotFound
    NVML_DEVICE_MIG_ENABLE = pynvml.NVML_DEVICE_MIG_ENABLE
    NVML_DEVICE_MIG_DISABLE = pynvml.NVML_DEVICE_MIG_DISABLE

    def __init__(self, devices, *, init_error=None, count_error=None, shutdown_error=None):
        super().__init__("fake_pynvml")
        self.devices = list(devices)
        self.init_error = init_error
        self.count_error = count_error
        self.shutdown_error = shutdown_error
        self.calls: list[str] = []
        self.init_threads: list[int] = []

    def nvmlInit(self):
        self.calls.append("nvmlInit")
        self.init_threads.append(threading.get_ident())
        if self.init_error:
            raise self.init_error()

    def nvmlShutdown(self):
        self.calls.append("nvmlShutdown")
        if self.shutdown_error:
            raise self.shutdown_error()

    def nvmlDeviceGetCount(self):
        if self.count_error:
            raise self.count_error()
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index):
        return self._device("nvmlDeviceGetHandleByIndex", self.devices[index])

    def nvmlDeviceGetName(self, device):
        return self._device("nvmlDeviceGetName", device).name

    def nvmlDeviceGetUUID(self, device):
        return self._device("nvmlDeviceGetUUID", device).uuid

    def nvmlDeviceGetMemoryInfo(self, device):
        device = self._device("nvmlDeviceGetMemoryInfo", device)
        total = device.memory_total_mib * MIB
        used = device.memory_used_mib * MIB
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetMigMode(self, device):
        device = self._device("nvmlDeviceGetMigMode", device)
        if device.mig_mode is None:
            raise pynvml.NVMLError_NotSupported()
        return [device.mig_mode, device.mig_mode]

    def nvmlDeviceGetUtilizationRates(self, device):
        device = self._device("nvmlDeviceGetUtilizationRates", device)
        if device.mig_mode == pynvml.NVML_DEVICE_MIG_ENABLE:
            # Real NVML has no whole-card utilisation for a card in MIG mode.
            raise pynvml.NVMLError_NotSupported()
        return SimpleNamespace(gpu=device.gpu_percent, memory=0)

    def _device(self, function, device):
        self.calls.append(function)
        if function in device.failing:
            raise device.failing[function]()
        return device


A100_UUID = "GPU-2f6c1a57-0b3e-4d8e-9c41-7a5e3b2d1c00"
L40S_UUID = "GPU-8e4d2c1b-5a6f-4e3d-8b2a-1c0d9e8f7a11"


def two_devices() -> list[FakeDevice]:
    """An A100 in MIG mode (index 0) and an L40S, which has no MIG (index 1)."""
    return [
        FakeDevice(
            uuid=A100_UUID,
            name="NVIDIA A100-SXM4-80GB",
            memory_total_mib=81920,
            memory_used_mib=1024,
            mig_mode=pynvml.NVML_DEVICE_MIG_ENABLE,
        ),
        FakeDevice(
            uuid=L40S_UUID,
            name="NVIDIA L40S",
            memory_total_mib=46068,
            memory_used_mib=12000,
            gpu_percent=37,
        ),
    ]


@pytest.fixture
def install_nvml(monkeypatch):
    """Put a FakeNvml where ``spawner.inventory.nvml`` finds ``pynvml``; returns the fake."""

    def install(devices=None, **failures) -> FakeNvml:
        fake = FakeNvml(two_devices() if devices is None else devices, **failures)
        monkeypatch.setattr(nvml_source, "pynvml", fake)
        return fake

    return install


@pytest.fixture
def fixed_host(monkeypatch):
    """This host as a known machine, so nodes built from it can be compared exactly."""
    monkeypatch.setattr(host, "host_name", lambda: "testhost")
    monkeypatch.setattr(host, "cpu_milli", lambda: 16000)
    monkeypatch.setattr(host, "memory_mib", lambda: 65536)
    return SimpleNamespace(name="testhost", cpu_milli=16000, memory_mib=65536)


@pytest.fixture
def inventory_log(caplog):
    """The records the inventory logged at WARNING or above (a function, read after the act)."""
    caplog.set_level(logging.DEBUG, logger="gpuslice.inventory")

    def warnings() -> list[logging.LogRecord]:
        return [
            record
            for record in caplog.records
            if record.name == "gpuslice.inventory" and record.levelno >= logging.WARNING
        ]

    return warnings


@pytest.fixture
def devices() -> list[FakeDevice]:
    return two_devices()


@pytest.fixture
def make_nvml():
    """The FakeNvml class, for a fake passed in as ``library=`` rather than installed."""
    return FakeNvml


@pytest.fixture
def fake_device():
    """The FakeDevice class, to build devices with other names or failures."""
    return FakeDevice
