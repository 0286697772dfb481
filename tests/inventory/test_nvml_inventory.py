"""NVML discovery against a fake pynvml: what it reads, and that a missing driver never crashes."""

from __future__ import annotations

import asyncio
import threading

import pynvml
import pytest

from spawner.inventory import SOURCE_LABEL, PoolRule
from spawner.inventory import nvml as nvml_source


def test_reads_each_device_with_raw_name_short_model_memory_and_mig(install_nvml, devices):
    install_nvml(devices)

    found = nvml_source.read_devices()

    assert [device.index for device in found] == [0, 1]
    a100, l40s = found
    assert a100.uuid == devices[0].uuid
    assert a100.raw_name == "NVIDIA A100-SXM4-80GB"
    assert a100.model == "A100-80GB"
    assert a100.memory_mib == 81920
    assert (a100.mig_capable, a100.mig_enabled) == (True, True)
    assert l40s.raw_name == "NVIDIA L40S"
    assert l40s.model == "L40S"
    assert l40s.memory_mib == 46068
    assert (l40s.mig_capable, l40s.mig_enabled) == (False, False)


def test_mig_capable_card_with_mig_off_is_capable_but_not_enabled(install_nvml, fake_device):
    install_nvml([fake_device("GPU-h200", "NVIDIA H200", 143771, mig_mode=pynvml.NVML_DEVICE_MIG_DISABLE)])

    [device] = nvml_source.read_devices()

    assert device.model == "H200"
    assert (device.mig_capable, device.mig_enabled) == (True, False)


def test_old_driver_without_mig_function_means_not_mig_capable(install_nvml, fake_device, inventory_log):
    old = fake_device(
        "GPU-v100",
        "Tesla V100-SXM2-16GB",
        16160,
        failing={"nvmlDeviceGetMigMode": pynvml.NVMLError_FunctionNotFound},
    )
    install_nvml([old])

    [device] = nvml_source.read_devices()

    assert device.model == "V100-16GB"
    assert device.mig_capable is False
    assert inventory_log() == []


def test_names_returned_as_bytes_by_old_pynvml_are_decoded(install_nvml, fake_device):
    install_nvml([fake_device(b"GPU-t4", b"Tesla T4", 15360)])

    [device] = nvml_source.read_devices()

    assert (device.uuid, device.raw_name, device.model) == ("GPU-t4", "Tesla T4", "T4")


def test_discover_builds_this_host_as_one_node(install_nvml, devices, fixed_host, inventory_log):
    fake = install_nvml(devices)

    [node] = nvml_source.discover()

    assert node.name == fixed_host.name
    assert node.cpu_milli == fixed_host.cpu_milli
    assert node.memory_mib == fixed_host.memory_mib
    assert node.labels[SOURCE_LABEL] == "nvml"
    assert [gpu.uuid for gpu in node.gpus] == [devices[0].uuid, devices[1].uuid]
    assert all(gpu.node == fixed_host.name for gpu in node.gpus)
    assert all(gpu.pools == frozenset({"dev"}) for gpu in node.gpus)
    assert [gpu.mig_capable for gpu in node.gpus] == [True, False]
    assert not any(gpu.simulated for gpu in node.gpus)
    assert fake.calls.count("nvmlInit") == fake.calls.count("nvmlShutdown") == 1
    assert inventory_log() == []


def test_discover_uses_the_configured_node_name_and_pools(install_nvml, devices, fixed_host):
    install_nvml(devices)
    rule = PoolRule(by_gpu={"1": frozenset({"train"}), devices[0].uuid: frozenset({"dev", "train"})})

    [node] = nvml_source.discover(node_name="gpu-7", pools=rule)

    assert node.name == "gpu-7"
    assert [gpu.pools for gpu in node.gpus] == [frozenset({"dev", "train"}), frozenset({"train"})]


def test_a_host_with_the_driver_but_no_gpu_is_an_empty_inventory(install_nvml, fixed_host, inventory_log):
    fake = install_nvml([])

    assert nvml_source.discover() == []
    assert inventory_log() == []
    assert "nvmlShutdown" in fake.calls


@pytest.mark.parametrize(
    "error",
    [pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded],
    ids=["no-library", "no-driver"],
)
def test_missing_driver_is_one_log_line_and_an_empty_inventory(install_nvml, inventory_log, error):
    fake = install_nvml(init_error=error)

    assert nvml_source.discover() == []

    [record] = inventory_log()
    message = record.getMessage()
    assert "NVML is not available" in message
    assert str(error()) in message
    assert "Install the NVIDIA driver" in message
    assert "nvmlShutdown" not in fake.calls, "shutting down an NVML that never started fails"


def test_other_init_failure_is_one_log_line(install_nvml, inventory_log):
    install_nvml(init_error=pynvml.NVMLError_NoPermission)

    assert nvml_source.read_devices() == []

    [record] = inventory_log()
    assert "NVML could not start" in record.getMessage()


def test_a_device_call_failing_is_one_log_line_naming_the_call_and_nvml_is_shut_down(
    install_nvml, devices, inventory_log
):
    devices[1].failing["nvmlDeviceGetMemoryInfo"] = pynvml.NVMLError_NotSupported
    fake = install_nvml(devices)

    assert nvml_source.discover() == []

    [record] = inventory_log()
    message = record.getMessage()
    assert "nvmlDeviceGetMemoryInfo" in message
    assert "GPU 1" in message
    assert "Not Supported" in message
    assert fake.calls[-1] == "nvmlShutdown"


def test_count_failing_is_one_log_line(install_nvml, inventory_log):
    install_nvml(count_error=pynvml.NVMLError_Unknown)

    assert nvml_source.read_devices() == []
    [record] = inventory_log()
    assert "nvmlDeviceGetCount" in record.getMessage()


def test_mig_query_failing_other_than_not_supported_is_reported(install_nvml, devices, inventory_log):
    devices[0].failing["nvmlDeviceGetMigMode"] = pynvml.NVMLError_GpuIsLost
    install_nvml(devices)

    assert nvml_source.read_devices() == []
    [record] = inventory_log()
    assert "nvmlDeviceGetMigMode for GPU 0" in record.getMessage()


def test_shutdown_failing_does_not_lose_the_inventory(install_nvml, devices, fixed_host, inventory_log):
    install_nvml(devices, shutdown_error=pynvml.NVMLError_Uninitialized)

    [node] = nvml_source.discover()

    assert len(node.gpus) == 2
    assert inventory_log() == []


def test_discover_async_runs_nvml_off_the_event_loop_thread(install_nvml, devices, fixed_host):
    fake = install_nvml(devices)

    async def discover_from_a_loop():
        return threading.get_ident(), await nvml_source.discover_async(node_name="gpu-9")

    loop_thread, nodes = asyncio.run(discover_from_a_loop())

    assert [node.name for node in nodes] == ["gpu-9"]
    assert [gpu.uuid for gpu in nodes[0].gpus] == [devices[0].uuid, devices[1].uuid]
    assert fake.init_threads and loop_thread not in fake.init_threads


def test_read_utilisation_reports_load_and_memory_per_gpu(install_nvml, devices, inventory_log):
    install_nvml(devices)

    a100, l40s = nvml_source.read_utilisation()

    assert (a100.index, a100.uuid) == (0, devices[0].uuid)
    assert a100.gpu_percent is None, "a card in MIG mode has no whole-card utilisation"
    assert (a100.memory_used_mib, a100.memory_total_mib) == (1024, 81920)
    assert (l40s.index, l40s.uuid, l40s.gpu_percent) == (1, devices[1].uuid, 37)
    assert (l40s.memory_used_mib, l40s.memory_total_mib) == (12000, 46068)
    assert inventory_log() == []


def test_read_utilisation_without_driver_is_one_log_line(install_nvml, inventory_log):
    install_nvml(init_error=pynvml.NVMLError_DriverNotLoaded)

    assert nvml_source.read_utilisation() == []
    [record] = inventory_log()
    assert "utilisation" in record.getMessage()


def test_read_utilisation_with_a_lost_gpu_is_one_log_line(install_nvml, devices, inventory_log):
    devices[1].failing["nvmlDeviceGetUtilizationRates"] = pynvml.NVMLError_GpuIsLost
    install_nvml(devices)

    assert nvml_source.read_utilisation() == []
    [record] = inventory_log()
    assert "nvmlDeviceGetUtilizationRates for GPU 1" in record.getMessage()


def test_an_injected_library_is_used_instead_of_pynvml(make_nvml, fixed_host, fake_device):
    fake = make_nvml([fake_device("GPU-injected", "NVIDIA H100 80GB HBM3", 81559)])

    [node] = nvml_source.discover(library=fake)

    assert [(gpu.uuid, gpu.model) for gpu in node.gpus] == [("GPU-injected", "H100-80GB")]
    assert "nvmlInit" in fake.calls
