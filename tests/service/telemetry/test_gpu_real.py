"""On a machine with an NVIDIA GPU: slices held to their size for real.

Two processes hold 1/8 slices of GPU 0; one allocates past its slice. The monitor, reading the real
NVML, warns and then stops it under the ``stop`` policy, and leaves the other alone. Under MPS
enforcement (when nvidia-cuda-mps-control is installed) an allocation past the daemon's pinned
memory limit fails inside the process. Allocations go through the CUDA driver API (libcuda, which
comes with the driver), so nothing else needs installing. Skipped, with the reason, elsewhere.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import subprocess
import sys

import pynvml
import pytest

from spawner.core.quota import QuotaPolicy
from spawner.core.units import SliceRequest
from spawner.enforce.mps import MPSControl, MPSLimits
from spawner.inventory import nvml as nvml_source
from spawner.ledger import Ledger
from spawner.service.telemetry import GPUMonitor

pytestmark = pytest.mark.gpu

ALLOCATE = """\
import ctypes, sys, time
cuda = ctypes.CDLL("libcuda.so.1")
def check(result, what):
    if result != 0:
        print(f"{what} failed: CUresult {result}", flush=True)
        sys.exit(3)
check(cuda.cuInit(0), "cuInit")
device = ctypes.c_int()
check(cuda.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
context = ctypes.c_void_p()
check(cuda.cuCtxCreate_v2(ctypes.byref(context), 0, device), "cuCtxCreate")
pointer = ctypes.c_uint64()
result = cuda.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(int(sys.argv[1]) * 1024 * 1024))
print(f"cuMemAlloc: CUresult {result}", flush=True)
if result != 0:
    sys.exit(2)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def gpu_node():
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError as error:
        pytest.skip(f"no NVIDIA driver / NVML on this machine ({error})")
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError as error:
        pytest.skip(f"the CUDA driver library is missing ({error})")
    nodes = nvml_source.discover()
    if not nodes or not nodes[0].gpus:
        pytest.skip("NVML sees no NVIDIA GPU on this machine")
    return nodes[0]


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []

    def start(mib: int, env: dict[str, str]) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-c", ALLOCATE, str(mib)],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()
        process.stdout.close()


def test_two_eighths_on_one_gpu_the_one_past_its_slice_is_warned_then_stopped(tmp_path, gpu_node, processes):
    gpu = gpu_node.gpus[0]
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as ledger:
        ledger.create_schema()
        ledger.sync_inventory([gpu_node])
        eighth = SliceRequest(milli_gpu=125, gpu_models=frozenset({gpu.model}))
        polite, greedy = (
            ledger.allocate(
                f"lease-{name}", f"{name}/", name, None, "interactive", eighth, QuotaPolicy()
            ).lease
            for name in ("polite", "greedy")
        )
        assert {share.gpu_uuid for lease in (polite, greedy) for share in lease.placement.shares} == {
            gpu.uuid
        }
        slice_mib = polite.placement.shares[0].memory_mib
        within = processes(1024, {"GPUSLICE_LEASE_ID": polite.id, "CUDA_VISIBLE_DEVICES": gpu.uuid})
        over = processes(slice_mib + 4096, {"GPUSLICE_LEASE_ID": greedy.id, "CUDA_VISIBLE_DEVICES": gpu.uuid})
        for process in (within, over):
            assert process.stdout.readline().strip() == "cuMemAlloc: CUresult 0"
        monitor = GPUMonitor(ledger, default_enforcement="stop", enforcement={}, grace_s=3)

        async def watch() -> None:
            for _ in range(120):  # a poll every half second, at most a minute
                await monitor.poll()
                if over.poll() is not None:
                    return
                await asyncio.sleep(0.5)

        asyncio.run(watch())
        asyncio.run(monitor.stop())

    kinds = [notice.kind for notice in reversed(monitor.notices) if notice.lease_id == greedy.id]
    assert kinds[:2] == ["over slice (stop)", "stopped"], list(monitor.notices)
    assert over.poll() is not None, "the process past its slice was not stopped"
    assert within.poll() is None, "the process within its slice was stopped"
    assert not [notice for notice in monitor.notices if notice.lease_id == polite.id]


def test_under_mps_an_allocation_past_the_limit_fails_inside_the_process(tmp_path, gpu_node, processes):
    if shutil.which("nvidia-cuda-mps-control") is None:
        pytest.skip("nvidia-cuda-mps-control is not installed")
    gpu = gpu_node.gpus[0]
    control = MPSControl(gpu.uuid, tmp_path / "mps")
    control.start()
    clients: list[subprocess.Popen] = []
    try:
        control.set_default_limits(MPSLimits(memory_mib=2048, active_thread_percentage=13))
        client_env = {
            "CUDA_VISIBLE_DEVICES": gpu.uuid,
            "CUDA_MPS_PIPE_DIRECTORY": str(control.pipe_directory),
            "CUDA_MPS_LOG_DIRECTORY": str(control.log_directory),
        }
        within = processes(1024, client_env)
        past = processes(4096, client_env)
        clients += [within, past]
        assert within.stdout.readline().strip() == "cuMemAlloc: CUresult 0"
        answer = past.stdout.readline().strip()
        assert answer == "cuMemAlloc: CUresult 2", answer  # CUDA_ERROR_OUT_OF_MEMORY
        assert past.wait(timeout=30) == 2
        assert control.server_pids(), "no MPS server ran the clients"
    finally:
        # The clients end before their daemon: a daemon asked to quit waits for its servers' clients.
        for process in clients:
            process.kill()
            process.wait()
        control.stop()
