"""What jupyterhub-idle-culler can be told (issue 15: GPU-idle slices "reported to
jupyterhub-idle-culler"): idle-culler decides on each server's ``last_activity`` from the hub, and
the hub only moves it forward. So a server whose GPU is busy is reported as active (it is not
culled while it trains from a background process); an idle one cannot be reported, and is stopped
by :class:`IdleCuller` itself. Against a real hub and a real notebook server.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime

import pytest
from harness.service_hubs import KEEP_LEASES, service_hub

from spawner.core.units import Lease, Placement, WorkloadClass
from spawner.service.telemetry.culling import IdleCuller
from spawner.service.telemetry.monitor import LeaseUse

from .test_culling import EIGHTH, PROFILES

pytestmark = pytest.mark.slow

ACTIVITY_ROLE = {"name": "gpuslice-activity", "scopes": ["users:activity"], "services": ["gpuslice"]}


@pytest.fixture(scope="module")
def activity_hub(tmp_path_factory):
    hub = service_hub(tmp_path_factory.mktemp("activity-hub"), service_args=[KEEP_LEASES])
    # The scope this needs, on top of the shipped role (which stops servers, and reads them).
    overlay = json.loads(hub.env["GPUSLICE_TEST_HUB"])
    overlay["roles"] = [*overlay["roles"], ACTIVITY_ROLE]
    hub.env["GPUSLICE_TEST_HUB"] = json.dumps(overlay)
    try:
        hub.start()
    except Exception:
        hub.stop()
        raise
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def alices_lease(activity_hub) -> Lease:
    """Alice's default server, ready; the lease it holds."""
    hub = activity_hub
    admin = hub.client(hub.admin_token)
    hub_api = f"{hub.url}/hub/api"
    started = admin.post(f"{hub_api}/users/alice/server", json={"profile": "a100-1-8"}, timeout=60)
    assert started.status_code in (201, 202), started.text
    deadline = time.monotonic() + 90
    while not admin.get(f"{hub_api}/users/alice", timeout=10).json()["servers"].get("", {}).get("ready"):
        assert time.monotonic() < deadline, hub.log()
        time.sleep(0.5)
    [lease] = [
        item
        for item in hub.client(hub.service_token).get(hub.api + "leases", timeout=10).json()["leases"]
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
    return held


def last_activity(hub) -> float:
    model = hub.client(hub.admin_token).get(f"{hub.url}/hub/api/users/alice", timeout=10).json()
    return datetime.fromisoformat(model["servers"][""]["last_activity"].replace("Z", "+00:00")).timestamp()


def test_a_busy_slice_is_reported_as_the_servers_activity_and_an_idle_one_is_not(activity_hub, alices_lease):
    hub, lease = activity_hub, alices_lease
    hub_api = f"{hub.url}/hub/api"
    culler = IdleCuller(PROFILES, hub_api, hub.service_token, report_gpu_activity=True)
    before = last_activity(hub)
    sample_at = time.time() + 120  # a sample later than anything the server reported itself

    idle = {lease.id: LeaseUse(lease, 0.125, 0.0, 0, idle_since=sample_at - 600)}
    assert asyncio.run(culler.report_activity(idle, sample_at)) == []
    estimated = {lease.id: LeaseUse(lease, 0.125, 0.1, 0, None, measured=False)}
    assert asyncio.run(culler.report_activity(estimated, sample_at)) == []
    assert last_activity(hub) == pytest.approx(before, abs=1)

    busy = {lease.id: LeaseUse(lease, 0.125, 0.1, 2048, None)}
    assert asyncio.run(culler.report_activity(busy, sample_at)) == [lease.id]
    assert last_activity(hub) == pytest.approx(sample_at, abs=1)  # what idle-culler reads
    # Within the report interval the server is not reported again.
    assert asyncio.run(culler.report_activity(busy, sample_at + 5)) == []

    # Reporting an older time changes nothing: the hub moves last_activity forward only, which is
    # why GPU idleness cannot be reported to idle-culler.
    later = IdleCuller(PROFILES, hub_api, hub.service_token, report_gpu_activity=True)
    assert asyncio.run(later.report_activity(busy, sample_at - 3600)) == [lease.id]
    assert last_activity(hub) == pytest.approx(sample_at, abs=1)


def test_without_the_scope_the_report_is_refused(activity_hub, alices_lease):
    hub, lease = activity_hub, alices_lease
    before = last_activity(hub)
    culler = IdleCuller(PROFILES, f"{hub.url}/hub/api", hub.token_for("bob"), report_gpu_activity=True)
    busy = {lease.id: LeaseUse(lease, 0.125, 0.1, 2048, None)}
    assert asyncio.run(culler.report_activity(busy, time.time() + 7200)) == []
    assert last_activity(hub) == pytest.approx(before, abs=1)
