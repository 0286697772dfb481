"""Real NVML discovery on a machine with an NVIDIA GPU; skipped with the reason anywhere else."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pynvml
import pytest

from spawner.inventory import SOURCE_LABEL, read_devices, read_utilisation
from spawner.inventory import nvml as nvml_source

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def device_count() -> int:
    """How many GPUs NVML itself reports; skips the module when NVML cannot start."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        pytest.skip(f"no NVIDIA driver / NVML on this machine ({error})")
    try:
        count = pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
    if count == 0:
        pytest.skip("NVML runs but sees no NVIDIA GPU on this machine")
    return count


def test_discover_finds_every_gpu_on_this_host(device_count):
    [node] = nvml_source.discover()

    assert node.labels[SOURCE_LABEL] == "nvml"
    assert node.cpu_milli > 0 and node.memory_mib > 0
    assert [gpu.index for gpu in node.gpus] == list(range(device_count))
    assert len({gpu.uuid for gpu in node.gpus}) == device_count
    for gpu in node.gpus:
        assert gpu.uuid.startswith("GPU-")
        assert gpu.memory_mib > 1024
        assert gpu.model and not gpu.model.startswith("NVIDIA")
        assert gpu.simulated is False


def test_devices_match_what_nvidia_smi_reports(device_count):
    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi is not installed, so there is nothing independent to compare with")
    listing = subprocess.run(
        ["nvidia-smi", "--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    expected = []
    for line in listing.strip().splitlines():
        index, uuid, name, memory = (field.strip() for field in line.split(","))
        expected.append((int(index), uuid, name, int(memory)))

    devices = read_devices()

    assert [(device.index, device.uuid, device.raw_name) for device in devices] == [
        (index, uuid, name) for index, uuid, name, _memory in expected
    ]
    for device, (_index, _uuid, _name, memory_mib) in zip(devices, expected, strict=True):
        # nvidia-smi rounds to the nearest MiB where the inventory rounds down.
        assert abs(device.memory_mib - memory_mib) <= 1


def test_utilisation_snapshot_reads_every_gpu(device_count):
    readings = read_utilisation()

    assert len(readings) == device_count
    for reading in readings:
        assert reading.uuid.startswith("GPU-")
        assert reading.gpu_percent is None or 0 <= reading.gpu_percent <= 100
        assert 0 <= reading.memory_used_mib <= reading.memory_total_mib


def test_discover_async_matches_discover(device_count):
    assert asyncio.run(nvml_source.discover_async()) == nvml_source.discover()
