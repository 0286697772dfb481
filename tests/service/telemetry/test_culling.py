"""GPU-aware idle culling: decisions from the monitor's samples (faked NVML, real processes), and the
stop of a real notebook server through a real hub's API."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness.service_hubs import KEEP_LEASES, service_hub

from spawner.config.profiles import load_profiles
from spawner.core.units import Lease, Placement, SliceRequest, WorkloadClass
from spawner.service.telemetry import GPUMonitor
from spawner.service.telemetry.culling import IdleCuller, IdleServer

from .conftest import grant

REPO_ROOT = Path(__file__).resolve().parents[3]
PROFILES = load_profiles(str(REPO_ROOT / "profiles"))
EIGHTH = PROFILES.by_slug["a100-1-8"].slice_request


def on_card(nvml, lease):
    return next(card for card in nvml.cards if card.uuid == lease.placement.shares[0].gpu_uuid)


@pytest.fixture
def cpu_busy_kernel():
    """A real process spinning on the CPU, as a kernel running a pandas loop while holding a slice."""
    started = []

    def start(lease_id: str) -> subprocess.Popen:
        spinning = subprocess.Popen(
            [sys.executable, "-c", "while True: pass"], env={**os.environ, "GPUSLICE_LEASE_ID": lease_id}
        )
        started.append(spinning)
        return spinning

    yield start
    for process in started:
        process.kill()
        process.wait()


def test_a_slice_busy_only_on_the_cpu_is_gpu_idle_and_culled_after_its_profiles_limit(
    ledger, nvml, clock, process_tree, cpu_busy_kernel
):
    idle = grant(ledger, "lease-idle", user="alice", holder="alice/", request=EIGHTH)
    busy = grant(ledger, "lease-busy", user="bob", holder="bob/lab", request=EIGHTH)
    job = grant(
        ledger, "lease-job", workload="batch", holder="job-1", request=SliceRequest(gpus=1, pool="train")
    )
    kernel = cpu_busy_kernel(idle.id)
    bob = process_tree({"GPUSLICE_LEASE_ID": busy.id})
    on_card(nvml, idle).processes[kernel.pid] = 1500
    on_card(nvml, idle).sm_percent[kernel.pid] = 0
    on_card(nvml, busy).processes[bob.child_pid] = 3000
    on_card(nvml, busy).sm_percent[bob.child_pid] = 30
    culler = IdleCuller(PROFILES, idle_timeouts={"a100-1-8": 60}, action="flag")
    monitor = GPUMonitor(ledger, nvml_library=nvml, clock=clock)
    monitor.culler = culler

    async def run() -> list[list[str]]:
        flagged = []
        for _ in range(14):
            await monitor.poll()
            flagged.append([server.lease.id for server in culler.flagged])
            clock.advance(5)
        return flagged

    flagged = asyncio.run(run())

    assert flagged[:12] == [[]] * 12  # idle, but for less than the profile's minute
    assert flagged[12:] == [[idle.id], [idle.id]]
    assert monitor.last_poll.lease_use[job.id].idle_since is not None  # idle, yet never a culling candidate
    [server] = culler.due(monitor.last_poll.lease_use, clock.now)
    assert (server.server, server.profile, server.limit_s) == ("", "a100-1-8", 60.0)
    reason = culler.reason(server, monitor.idle_threshold_percent)
    assert "alice's default server was stopped" in reason and "idle for 1m" in reason
    assert "longer than the a100-1-8 profile allows (1m)" in reason


def test_profiles_set_the_limit_and_batch_jobs_and_unmatched_leases_follow_the_default(ledger):
    culler = IdleCuller(PROFILES, idle_timeout_s=7200, idle_timeouts={"a100-1-8": 600, "a100-full": 0})
    eighth = grant(ledger, "lease-eighth", request=EIGHTH)
    quarter = grant(ledger, "lease-quarter", request=PROFILES.by_slug["a100-1-4"].slice_request)
    odd = grant(ledger, "lease-odd", request=SliceRequest(milli_gpu=300, pool="dev"))

    assert culler.limit_for(eighth) == (600.0, "a100-1-8")
    assert culler.limit_for(quarter) == (7200.0, "a100-1-4")
    assert culler.limit_for(odd) == (7200.0, None)
    with pytest.raises(Exception, match="must be one of stop, flag"):
        IdleCuller(PROFILES, action="kill")


@pytest.fixture(scope="module")
def culling_hub(tmp_path_factory):
    # The shipped hub_config.py's role for the service, as is: it carries 'delete:servers'.
    hub = service_hub(tmp_path_factory.mktemp("culling-hub"), service_args=[KEEP_LEASES])
    try:
        hub.start()
    except Exception:
        hub.stop()
        raise
    yield hub
    hub.stop()


@pytest.mark.slow
def test_an_idle_server_is_stopped_through_the_hubs_api_and_its_lease_released(culling_hub):
    hub = culling_hub
    admin = hub.client(hub.admin_token)
    hub_api = f"{hub.url}/hub/api"
    started = admin.post(f"{hub_api}/users/alice/server", json={"profile": "a100-1-8"}, timeout=60)
    assert started.status_code in (201, 202), started.text
    deadline = time.monotonic() + 90
    while not admin.get(f"{hub_api}/users/alice", timeout=10).json()["servers"].get("", {}).get("ready"):
        assert time.monotonic() < deadline, hub.log()
        time.sleep(0.5)
    service = hub.client(hub.service_token)
    [lease] = [
        item
        for item in service.get(hub.api + "leases", timeout=10).json()["leases"]
        if item["user"] == "alice"
    ]
    held = Lease(
        lease["id"],
        lease["holder"],
        "alice",
        lease.get("group"),
        WorkloadClass.interactive,
        EIGHTH,
        Placement(lease["node"], ()),
        0.0,
    )
    idle = IdleServer(held, "", 3600.0, 600.0, "a100-1-8")

    refused = IdleCuller(PROFILES, hub_api, hub.token_for("bob"))
    assert asyncio.run(refused.stop_server(idle)) is False
    culler = IdleCuller(PROFILES, hub_api, hub.service_token)
    assert asyncio.run(culler.stop_server(idle)) is True

    deadline = time.monotonic() + 60
    while admin.get(f"{hub_api}/users/alice", timeout=10).json()["servers"]:
        assert time.monotonic() < deadline, "the hub did not stop alice's server"
        time.sleep(0.5)
    released = service.get(hub.api + f"leases/{lease['id']}", timeout=10)
    assert released.status_code == 404 or released.json()["lease"]["released_at"] is not None
