"""A real spawn waits, with a progress message, while a batch job gives back the dev GPU it borrowed.

The hub of ``hub_config.py`` with its service on two simulated GPUs: index 0 in the dev pool, index
1 in the train pool. A first job holds the training GPU, so a second (preemptible: no group has a
guarantee) borrows the idle dev GPU. Alice then starts a server with a 1/8 slice: the service has
no room, stops the borrowing job (it traps SIGTERM and saves a checkpoint), and the spawn waits for
it, saying so on the progress stream, until the slice is granted.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from harness import HubProcess

from spawner.config.profiles import load_profiles
from spawner.hub.mixin import GPUSliceSpawnerMixin
from spawner.hub.service_client import LeaseRefused

from .conftest import ADMIN, ADMIN_PASSWORD, REPO_ROOT, Hub, Jobs, progress_messages, small_quota_profiles

SLICE = "a100-1-8"

SLEEPS = "import time\nprint('started', flush=True)\ntime.sleep(600)\n"

CHECKPOINTS = """\
import pathlib, signal, sys, time
checkpoint = pathlib.Path({checkpoint!r})
if checkpoint.exists():
    print("resumed from", checkpoint.read_text(), flush=True)
    sys.exit(0)

def save_and_leave(signum, frame):
    print("checkpoint", flush=True)
    # Writing it takes a while (within the 30 s grace): longer than the hub's slow_spawn_timeout,
    # so the spawn is still pending when the test reads its progress.
    time.sleep(15)
    checkpoint.write_text("step 7")
    sys.exit(0)

signal.signal(signal.SIGTERM, save_and_leave)
print("training", flush=True)
for _ in range(6000):
    time.sleep(0.1)
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    state = tmp_path_factory.mktemp("reclaim-hub")
    extra_env = {
        "GPUSLICE_PROFILES_DIR": str(small_quota_profiles(state / "profiles")),
        "GPUSLICE_INVENTORY": "simulated",
        "GPUSLICE_SIMULATED_GPUS": "2",
        "GPUSLICE_TRAIN_GPUS": "1",
        "GPUSLICE_GROUPS": "researchers=alice,bob",
        "GPUSLICE_ADMIN_USERS": ADMIN,
        "GPUSLICE_ADMIN_PASSWORD": ADMIN_PASSWORD,
    }
    running = Hub(HubProcess(state, extra_env)).start()
    yield running
    try:
        running.stop_all_servers()
    finally:
        running.process.stop()


@pytest.mark.slow
def test_a_spawn_waits_with_a_message_while_a_job_gives_back_the_dev_gpu(hub):
    bob = Jobs(hub, "bob")
    blocker = bob.submit("blocker", SLEEPS)
    assert bob.wait_for(blocker["id"], ("running",))["pool"] == "train"
    checkpoint = hub.process.state_dir / "bob-checkpoint"
    borrower = bob.submit("borrower", CHECKPOINTS.format(checkpoint=str(checkpoint)))
    on_dev = bob.wait_for(borrower["id"], ("running",))
    assert (on_dev["pool"], on_dev["borrowed"]) == ("dev", True)
    (dev_gpu,) = [gpu for gpu in hub.service("GET", "gpus").json()["gpus"] if "dev" in gpu["pools"]]

    assert hub.api("POST", "users", json={"usernames": ["alice"]}).status_code in (201, 409)
    response = hub.api("POST", "users/alice/server", json={"profile": SLICE})
    assert response.status_code == 202, response.text  # pending: it waits for the GPU
    events = progress_messages(hub, "alice")
    messages = [event.get("message", "") for event in events]
    assert events[-1].get("ready"), (messages, hub.process.log())
    waiting = [m for m in messages if m.startswith("Waiting for a batch job to checkpoint")]
    assert waiting, messages
    assert waiting[0].startswith(
        f"Waiting for a batch job to checkpoint and give back GPU {dev_gpu['node']}:{dev_gpu['index']} ("
    )
    assert waiting[0].endswith(" s)")
    granted = [m for m in messages if m.startswith("Granted ")]
    assert granted and messages.index(waiting[-1]) < messages.index(granted[0])

    server = hub.wait_ready("alice")
    lease = hub.service("GET", f"leases/{server['state']['gpuslice_lease_id']}").json()["lease"]
    assert lease["shares"][0]["gpu_uuid"] == dev_gpu["uuid"]
    job = bob.get(borrower["id"])
    assert [event["to_state"] for event in job["events"]][:4] == ["queued", "running", "preempted", "queued"]
    assert "an interactive slice needs the dev GPU" in job["events"][2]["reason"]
    assert "checkpoint" in bob.log(borrower["id"]) and checkpoint.exists()
    assert bob.get(blocker["id"])["job"]["state"] == "running"  # the job on the training GPU stays

    assert hub.api("DELETE", "users/alice/server").status_code in (202, 204)
    hub.wait_gone("alice")
    assert bob.wait_for(borrower["id"], ("succeeded", "failed"))["state"] == "succeeded"
    assert "resumed from step 7" in bob.log(borrower["id"])
    bob.cancel(blocker["id"])


class ReclaimingService:
    """A service client that answers ``reclaiming`` a given number of times, then grants."""

    def __init__(self, reclaiming_answers: int):
        self.left = reclaiming_answers
        self.asked: list[str] = []

    async def allocate(self, *, lease_id: str, user: str, holder: str, profile: str) -> dict:
        self.asked.append(lease_id)
        if self.left:
            self.left -= 1
            answer = {"reason": "reclaiming", "retry_after": 1, "stopping_jobs": 2, "gpus": ["n:0", "n:1"]}
            raise LeaseRefused("stopping 2 batch jobs ...", 409, "reclaiming", answer)
        return {"id": lease_id}


def spawner_for(reclaim_timeout: float) -> GPUSliceSpawnerMixin:
    spawner = GPUSliceSpawnerMixin(reclaim_timeout=reclaim_timeout)
    spawner.user = SimpleNamespace(name="alice")
    spawner.name = ""
    spawner.lease_id = "server-1"
    return spawner


def slice_profile():
    return load_profiles(str(REPO_ROOT / "profiles")).by_slug[SLICE]


def test_a_start_asks_again_under_the_same_lease_id_until_the_slice_is_granted():
    spawner, service = spawner_for(reclaim_timeout=60), ReclaimingService(reclaiming_answers=2)
    lease = asyncio.run(spawner._allocate_waiting_for_reclaim(service, slice_profile()))
    assert lease == {"id": "server-1"} and service.asked == ["server-1"] * 3
    notes = [event["message"] for event in spawner._progress_log()]
    assert len(notes) == 2
    assert all(
        note.startswith("Waiting for 2 batch jobs to checkpoint and give back GPU n:0, n:1 (")
        for note in notes
    )


def test_a_start_gives_up_after_the_reclaim_timeout_saying_why():
    spawner, service = spawner_for(reclaim_timeout=1.5), ReclaimingService(reclaiming_answers=1000)
    with pytest.raises(LeaseRefused) as refused:
        asyncio.run(spawner._allocate_waiting_for_reclaim(service, slice_profile()))
    assert refused.value.reason == "reclaim-timeout" and refused.value.status == 409
    assert "needs GPU n:0, n:1, which batch jobs were still giving back after" in refused.value.message
