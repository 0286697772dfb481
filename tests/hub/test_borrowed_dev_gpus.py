"""A lab with no training GPU at all: batch jobs borrow the idle dev GPU, and give it back.

The hub of ``hub_config.py`` on one simulated GPU, which the default split keeps for notebooks
(one GPU has no second half to train on). A 1-GPU job is queued rather than refused, runs there as
borrowed work, and yields the GPU when a user starts a slice on it; and cancelling a job that takes
its whole 20 s grace to stop holds up nobody's spawn (the spawner's calls to the service each have
``GPUSliceSpawnerMixin.request_timeout``, 10 s, to answer).
"""

from __future__ import annotations

import threading

import pytest
from harness import HubProcess
from harness.jobs import CHECKPOINTS

from .conftest import ADMIN, ADMIN_PASSWORD, Hub, Jobs, small_quota_profiles

pytestmark = pytest.mark.slow

SLICE = "a100-1-8"

IGNORES_SIGTERM = """\
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("deaf to SIGTERM", flush=True)
time.sleep(600)
"""

SERVICE_CONFIG = """\
c.JobService.cancel_grace_seconds = 20
c.BatchScheduler.preemption_grace_seconds = 5
c.BatchScheduler.interval_seconds = 0.5
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    state = tmp_path_factory.mktemp("dev-only-hub")
    service_config = state / "service_config.py"
    service_config.write_text(SERVICE_CONFIG)
    extra_env = {
        "GPUSLICE_PROFILES_DIR": str(small_quota_profiles(state / "profiles")),
        "GPUSLICE_INVENTORY": "simulated",
        "GPUSLICE_SIMULATED_GPUS": "1",
        "GPUSLICE_SERVICE_CONFIG": str(service_config),
        "GPUSLICE_ADMIN_USERS": ADMIN,
        "GPUSLICE_ADMIN_PASSWORD": ADMIN_PASSWORD,
    }
    running = Hub(HubProcess(state, extra_env)).start()
    yield running
    try:
        running.stop_all_servers()
    finally:
        running.process.stop()


def the_gpu(hub: Hub) -> dict:
    (gpu,) = hub.service("GET", "gpus").json()["gpus"]
    return gpu


def spawn_slice(hub: Hub, user: str) -> None:
    assert hub.api("POST", "users", json={"usernames": [user]}).status_code in (201, 409)
    response = hub.api("POST", f"users/{user}/server", json={"profile": SLICE})
    assert response.status_code in (201, 202), response.text


def test_a_job_queues_runs_on_the_borrowed_dev_gpu_and_yields_it_to_a_slice(hub):
    gpu = the_gpu(hub)
    assert gpu["pools"] == ["dev"]
    bob = Jobs(hub, "bob")
    checkpoint = hub.process.state_dir / "bob-checkpoint"
    job = bob.submit("borrower", CHECKPOINTS.format(checkpoint=str(checkpoint), hold=""))
    assert job["state"] == "queued"  # accepted: only dev GPUs could ever hold it, and they may

    running = bob.wait_for(job["id"], ("running",))
    assert (running["pool"], running["borrowed"], running["gpu_uuids"]) == ("dev", True, [gpu["uuid"]])

    spawn_slice(hub, "alice")
    server = hub.wait_ready("alice", timeout=120)
    lease = hub.service("GET", f"leases/{server['state']['gpuslice_lease_id']}").json()["lease"]
    assert lease["shares"][0]["gpu_uuid"] == gpu["uuid"]
    bob.wait_for(job["id"], ("queued",))
    events = [event["to_state"] for event in bob.get(job["id"])["events"]]
    assert events[:4] == ["queued", "running", "preempted", "queued"]
    assert "checkpoint saved" in bob.log(job["id"])
    # Back in the queue behind alice's slice, it says where it will run and what that means.
    reason = bob.wait_placed(job["id"])["waiting_reason"]
    assert "no training node has 1 GPU, so it runs on idle dev GPUs, borrowed" in reason
    assert "may be stopped" in reason

    assert hub.api("DELETE", "users/alice/server").status_code in (202, 204)
    hub.wait_gone("alice")
    assert bob.wait_for(job["id"], ("succeeded", "failed"))["state"] == "succeeded"
    assert "resumed from step 42" in bob.log(job["id"])


def test_cancelling_a_job_that_takes_its_whole_grace_holds_up_no_spawn(hub):
    gpu = the_gpu(hub)
    bob = Jobs(hub, "bob")
    deaf = bob.submit("deaf", IGNORES_SIGTERM)
    bob.wait_for(deaf["id"], ("running",))

    cancelled: dict = {}

    def cancel() -> None:
        cancelled["answer"] = bob.session.post(bob.base + f"jobs/{deaf['id']}/cancel", timeout=60)

    canceller = threading.Thread(target=cancel)
    canceller.start()
    spawn_slice(hub, "carol")  # at the same moment: the slice needs the GPU the job still holds
    canceller.join()
    answer = cancelled["answer"]
    assert answer.status_code == 200, answer.text
    assert answer.json()["job"]["state"] == "cancelled"
    # The process has not gone yet (it ignores SIGTERM): the GPU stays leased to the job until it
    # is killed, and nothing else is placed on it meanwhile.
    holders = [(holder["holder"], holder["milli_gpu"]) for holder in the_gpu(hub)["holders"]]
    assert holders == [(deaf["id"], 1000)], holders

    server = hub.wait_ready("carol", timeout=150)
    lease = hub.service("GET", f"leases/{server['state']['gpuslice_lease_id']}").json()["lease"]
    assert lease["shares"][0]["gpu_uuid"] == gpu["uuid"]
    job = bob.get(deaf["id"])
    assert job["job"]["state"] == "cancelled"
    assert [event["to_state"] for event in job["events"]] == ["queued", "running", "cancelled"]
    assert job["job"]["lease_id"] not in {lease["id"] for lease in hub.live_leases()}
    log = hub.process.log()
    assert "gpu-service-unavailable" not in log and "timed out" not in log.lower(), log
    assert hub.api("DELETE", "users/carol/server").status_code in (202, 204)
    hub.wait_gone("carol")
