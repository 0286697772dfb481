"""Leases of servers the hub no longer has are given back; nothing else is."""

from __future__ import annotations

import time
import uuid

import pytest
from harness.service_hubs import service_hub

from spawner.core.units import GPUShare, Lease, Placement, SliceRequest, WorkloadClass
from spawner.core.vocabulary import expiring_holder, holder_expiry, holder_label
from spawner.service.reconcile import expired_leases, server_of, stale_leases, unchecked_leases


def lease(holder: str, user: str = "alice", created_at: float = 0.0, workload=WorkloadClass.interactive):
    return Lease(
        id=uuid.uuid4().hex,
        holder=holder,
        user=user,
        group=None,
        workload=workload,
        request=SliceRequest(milli_gpu=125),
        placement=Placement("n", (GPUShare("GPU-1", 125, 1024),)),
        created_at=created_at,
    )


def test_only_notebook_server_leases_are_reconciled():
    assert server_of(lease("alice/")) == ("alice", "")
    assert server_of(lease("alice/big")) == ("alice", "big")
    assert server_of(lease("job-17")) is None
    assert server_of(lease("bob/", user="alice")) is None
    assert server_of(lease("alice/", workload=WorkloadClass.batch)) is None


def test_an_expiry_is_kept_in_the_holder_and_read_back():
    holder = expiring_holder("maintenance", 1_900_000_000.2)
    assert holder == "maintenance until 2030-03-17T17:46:41Z"  # rounded up, never earlier
    assert (holder_label(holder), holder_expiry(holder)) == ("maintenance", 1_900_000_001)
    assert (holder_label("alice/"), holder_expiry("alice/")) == ("alice/", None)
    assert server_of(lease(expiring_holder("alice/big", 10))) == ("alice", "big")


def test_expired_leases_are_released_and_leases_nothing_would_release_are_reported():
    expired = lease(expiring_holder("maintenance", 50))
    later = lease(expiring_holder("maintenance", 500))
    server = lease("alice/")
    forever = lease("forever")
    job = lease(expiring_holder("job-1", 50), workload=WorkloadClass.batch)
    everything = [expired, later, server, forever, job]
    assert expired_leases(everything, now=100.0) == [expired]
    assert unchecked_leases(everything) == [forever]


def test_stale_leases_are_those_of_missing_servers_past_the_grace():
    running = lease("alice/")
    stopped = lease("alice/old")
    young = lease("alice/starting", created_at=95.0)
    gone_user = lease("zed/", user="zed")
    unknown_user = lease("yan/", user="yan")
    job = lease("job-1")
    stale = stale_leases(
        [running, stopped, young, gone_user, unknown_user, job],
        {"alice": frozenset({""}), "zed": None},
        now=100.0,
        grace_seconds=10.0,
    )
    assert stale == [stopped, gone_user]


@pytest.fixture(scope="module")
def quick_reconciling_hub(tmp_path_factory):
    hub = service_hub(
        tmp_path_factory.mktemp("reconcile-hub"),
        service_args=["--LeaseReconciler.grace_seconds=0", "--LeaseReconciler.interval_seconds=0.5"],
    )
    try:
        hub.start()
    except Exception:
        hub.stop()
        raise
    yield hub
    hub.stop()


def test_the_service_releases_the_lease_of_a_server_the_hub_does_not_have(quick_reconciling_hub):
    hub = quick_reconciling_hub
    service = hub.client(hub.service_token)
    orphan = {
        "lease_id": uuid.uuid4().hex,
        "user": "alice",
        "holder": "alice/",
        "request": {"milli_gpu": 125},
    }
    # Not a server: kept until its expiry, whatever the hub's servers.
    job = {
        "lease_id": uuid.uuid4().hex,
        "user": "alice",
        "holder": "job-1",
        "expires_at": time.time() + 3600,
        "request": {"milli_gpu": 125},
    }
    for body in (orphan, job):
        assert service.post(hub.api + "leases", json=body, timeout=10).status_code == 201
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        record = service.get(hub.api + f"leases/{orphan['lease_id']}", timeout=10).json()["lease"]
        if record["released_at"] is not None:
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"the orphaned lease was never released:\n{hub.log()}")
    kept = service.get(hub.api + f"leases/{job['lease_id']}", timeout=10).json()["lease"]
    assert kept["released_at"] is None
    assert "the hub no longer has server 'alice/'" in hub.log_path.read_text()
