"""Preemption through the REST API on a real hub and service.

Two simulated GPUs on one node: index 0 in the dev pool, index 1 in the train pool. Researchers
(alice) are guaranteed one GPU; students (bob) have no guarantee, so every job of bob's runs on
borrowed GPUs and is preemptible. The jobs trap SIGTERM, log "checkpoint" and save one; run
again, they resume from it.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from harness.jobs import (
    CHECKPOINTS,
    FINAL,
    SLEEPS,
    cancel,
    events,
    follow_log,
    get_job,
    submit,
    train_gpu,
    wait_for,
    wait_for_log,
    wait_until,
    waiting_reason,
)
from harness.service_hubs import quotas_yaml, start_sched_hub

pytestmark = pytest.mark.slow

QUOTAS = quotas_yaml(
    """\
    researchers:
      batch:
        guaranteed_gpus: 1
    students:
      batch:
        borrow_gpus: 4
"""
)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = start_sched_hub(
        tmp_path_factory.mktemp("preemption-hub"),
        QUOTAS,
        [
            "--Inventory.train_gpu_indices=[1]",
            # Longer than any test takes to let a job write its checkpoint: the jobs end on
            # their own, and a job that ran out of grace would be killed, not checkpointed.
            "--BatchScheduler.preemption_grace_seconds=120",
            # Small log chunks, so that following a log crosses the line between two runs.
            "--JobService.log_chunk_bytes=40",
        ],
    )
    yield hub
    hub.stop()


def preempted_for_a_guarantee(hub, tmp_path, name: str) -> tuple[dict, dict, dict, dict, Path]:
    """bob's borrowing job, running on the training GPU, preempted by a job of alice's group
    (within its guarantee) and writing its checkpoint until the returned file exists: the
    borrower as it ran, as it was preempted, alice's job, and that file."""
    alice, bob = hub.as_user("alice"), hub.as_user("bob")
    hold = tmp_path / "checkpoint-may-finish"
    borrower = submit(
        bob, hub, CHECKPOINTS.format(checkpoint=str(tmp_path / "ckpt"), hold=str(hold)), name=name
    )
    running = wait_for(bob, hub, borrower["id"], ("running",))
    wait_for_log(bob, hub, borrower["id"], "training")
    owner = submit(alice, hub, "print('alice ran')\n", name=f"guaranteed, after {name}")
    preempted = wait_for(bob, hub, borrower["id"], ("preempted",))
    wait_for_log(bob, hub, borrower["id"], "checkpoint")
    return borrower, running, preempted, owner, hold


def test_a_group_within_its_guarantee_takes_its_gpu_back_from_a_borrowing_job(hub, tmp_path):
    alice, bob = hub.as_user("alice"), hub.as_user("bob")
    borrower, running, preempted, owner, hold = preempted_for_a_guarantee(hub, tmp_path, "borrower")
    assert (running["pool"], running["borrowed"]) == ("train", True)
    assert "group researchers needs its guaranteed GPUs back" in preempted["reason"]
    # While the borrower writes its checkpoint, it keeps its GPU, the API answers, and the
    # guaranteed job waits for it rather than for anyone else.
    waiting = waiting_reason(alice, hub, owner["id"], "borrowed job(s) to stop")
    assert waiting["state"] == "queued"
    assert train_gpu(hub)["milli_free"] == 0
    assert get_job(bob, hub, borrower["id"])["job"]["state"] == "preempted"

    hold.touch()
    done = wait_for(alice, hub, owner["id"], FINAL, timeout=60)
    assert (done["state"], done["pool"], done["borrowed"]) == ("succeeded", "train", False)
    again = wait_for(bob, hub, borrower["id"], FINAL, timeout=60)
    assert again["state"] == "succeeded", again
    assert events(bob, hub, borrower["id"]) == [
        "queued",
        "running",
        "preempted",
        "queued",
        "running",
        "succeeded",
    ]
    assert again["attempts"] == 2

    log, end = follow_log(bob, hub, borrower["id"])
    lines = [line for line in log.splitlines() if not line.startswith("[gpuslice]")]
    run_two = next(line for line in lines if line.startswith("--- run 2"))
    assert run_two.startswith("--- run 2 (after preemption: group researchers needs its guaranteed GPUs")
    assert run_two.endswith(") ---")
    assert [line for line in lines if not line.startswith("---")] == [
        "training",
        "checkpoint",
        "checkpoint saved",
        "resumed from step 42",
    ]
    assert lines.index("checkpoint saved") < lines.index(run_two) < lines.index("resumed from step 42")
    # Offsets stay put: reading again from inside the first run gives the same text.
    middle = log.encode().index(b"checkpoint")
    tail, tail_end = follow_log(bob, hub, borrower["id"], offset=middle)
    assert tail == log.encode()[middle:].decode() and tail_end == end


def test_an_interactive_slice_takes_the_dev_gpu_back_from_a_borrowing_job(hub, tmp_path):
    bob = hub.as_user("bob")
    service = hub.client(hub.service_token)
    blocker = submit(bob, hub, SLEEPS, name="blocker")
    wait_for(bob, hub, blocker["id"], ("running",))
    borrower = submit(
        bob, hub, CHECKPOINTS.format(checkpoint=str(tmp_path / "ckpt"), hold=""), name="dev-borrower"
    )
    on_dev = wait_for(bob, hub, borrower["id"], ("running",))
    assert (on_dev["pool"], on_dev["borrowed"]) == ("dev", True)
    wait_for_log(bob, hub, borrower["id"], "training")

    body = {
        "lease_id": f"slice-{uuid.uuid4().hex}",
        "user": "carol",
        "holder": "carol/",
        "profile": "a100-1-8",
    }
    first = service.post(hub.api + "leases", json=body, timeout=30)
    assert first.status_code == 409, first.text
    answer = first.json()
    assert answer["reason"] == "reclaiming", answer
    assert answer["gpus"] == ["sim-node:0"] and answer["stopping_jobs"] == 1
    assert answer["message"].startswith("stopping 1 batch job that borrowed the dev GPU sim-node:0")
    assert "the slice is ready within ~" in answer["message"]
    assert isinstance(answer["retry_after"], int) and answer["retry_after"] >= 1
    assert first.headers["Retry-After"] == str(answer["retry_after"])

    def granted():
        response = service.post(hub.api + "leases", json=body, timeout=30)
        if response.status_code == 409:
            assert response.json()["reason"] == "reclaiming", response.text
            return None
        assert response.status_code == 201, response.text
        return response.json()["lease"]

    lease = wait_until(hub, "the slice granted", granted)
    assert lease["shares"][0]["gpu_uuid"].endswith("sim-node-0")
    log = wait_for_log(bob, hub, borrower["id"], "checkpoint saved")
    assert "checkpoint" in log
    # Asking again while the job checkpointed stopped no one else, and batch work waits for the slice.
    assert events(bob, hub, borrower["id"]).count("preempted") == 1
    assert get_job(bob, hub, blocker["id"])["job"]["state"] == "running"
    assert events(bob, hub, borrower["id"])[-2:] == ["preempted", "queued"]
    waiting_reason(bob, hub, borrower["id"], "waiting for 1 GPU on one node")

    # The slice given back, the job borrows the idle dev GPU again and resumes.
    assert service.delete(hub.api + f"leases/{lease['id']}", timeout=30).status_code == 200
    again = wait_for(bob, hub, borrower["id"], FINAL, timeout=60)
    assert again["state"] == "succeeded" and again["attempts"] == 2
    assert "resumed from step 42" in follow_log(bob, hub, borrower["id"])[0]
    cancel(bob, hub, blocker["id"])


def test_a_slice_that_stopping_batch_jobs_would_not_help_is_refused_as_before(hub):
    service = hub.client(hub.service_token)
    body = {
        "lease_id": f"too-big-{uuid.uuid4().hex}",
        "user": "carol",
        "holder": "carol/",
        "request": {"gpus": 2, "pool": "dev"},
    }
    response = service.post(hub.api + "leases", json=body, timeout=30)
    assert response.status_code == 409, response.text
    assert response.json()["reason"] == "no_capacity"


def test_cancelling_a_job_while_it_checkpoints_cancels_it_once_its_process_is_gone(hub, tmp_path):
    alice, bob = hub.as_user("alice"), hub.as_user("bob")
    borrower, _, _, owner, hold = preempted_for_a_guarantee(hub, tmp_path, "cancelled while checkpointing")

    # The cancel answers at once and ends the job for good; the checkpoint the job is writing
    # goes on, and its GPU comes back once the process is gone (never queued again).
    response = bob.post(hub.api + f"jobs/{borrower['id']}/cancel", timeout=60)  # while it checkpoints
    hold.touch()
    assert response.status_code == 200, response.text
    assert response.json()["job"]["state"] == "cancelled"
    assert "preempted" in events(bob, hub, borrower["id"])
    assert events(bob, hub, borrower["id"])[-1] == "cancelled"
    assert "checkpoint saved" in wait_for_log(bob, hub, borrower["id"], "checkpoint saved")
    assert wait_for(alice, hub, owner["id"], FINAL, timeout=60)["state"] == "succeeded"
    assert events(bob, hub, borrower["id"])[-1] == "cancelled"  # its preemption did not queue it again
