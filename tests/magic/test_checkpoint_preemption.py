"""A job preempted twice resumes from its checkpoint each time and ends with the result of a job that
ran through: on a real hub and service, whose scheduler preempts it for real.

As in tests/service/test_preemption.py: index 0 is a dev GPU (held whole by carol, so nothing
borrows it), index 1 the one training GPU. bob's group has no guarantee, so his job runs there on
borrowed time; each job of alice's (her group is guaranteed one GPU) takes it back: the service
sends bob's job SIGTERM, :mod:`spawner.checkpoint` saves and ends the run, and the job goes back
to the queue with its ``$GPUSLICE_CHECKPOINT_DIR`` kept for the next run.
"""

from __future__ import annotations

import re

import pytest
from harness.jobs import FINAL, events, follow_log, submit, wait_for, wait_until
from harness.service_hubs import quotas_yaml, start_sched_hub

from .test_checkpoints import training

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
STEPS = 60
STARTS = re.compile(r"^starting at step (\d+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = start_sched_hub(
        tmp_path_factory.mktemp("checkpoint-hub"),
        QUOTAS,
        ["--Inventory.train_gpu_indices=[1]", "--BatchScheduler.preemption_grace_seconds=60"],
        hold_dev_gpu=True,
    )
    yield hub
    hub.stop()


def runs_started(session, hub, job_id: str) -> list[int]:
    """The step each run of the job started at, from its log."""
    return [int(step) for step in STARTS.findall(follow_log(session, hub, job_id)[0])]


def last_step(session, hub, job_id: str) -> int:
    steps = re.findall(r"^step (\d+)$", follow_log(session, hub, job_id)[0], re.MULTILINE)
    return int(steps[-1]) if steps else 0


def preempt_once(hub, bob, job_id: str, runs: int) -> None:
    """Once the job's ``runs``-th run has made progress, a job of alice's takes the GPU back; returns
    when the job runs again (its next run started)."""
    alice = hub.as_user("alice")
    wait_until(hub, f"run {runs} of {job_id} training", lambda: len(runs_started(bob, hub, job_id)) == runs)
    reached = runs_started(bob, hub, job_id)[-1] + 3
    wait_until(
        hub, f"{job_id} past step {reached}", lambda: last_step(bob, hub, job_id) >= reached, timeout=60
    )
    owner = submit(alice, hub, "print('alice ran')\n", name="takes the GPU back")
    wait_for(bob, hub, job_id, ("preempted", "queued"), timeout=60)
    assert wait_for(alice, hub, owner["id"], FINAL, timeout=90)["state"] == "succeeded"
    wait_until(
        hub,
        f"run {runs + 1} of {job_id}",
        lambda: len(runs_started(bob, hub, job_id)) == runs + 1,
        timeout=90,
    )


def test_a_job_preempted_twice_resumes_each_time_and_ends_as_one_that_ran_through(hub):
    bob = hub.as_user("bob")
    job = submit(bob, hub, training(steps=STEPS, pause=0.25), name="preempted twice")
    wait_for(bob, hub, job["id"], ("running",), timeout=60)
    preempt_once(hub, bob, job["id"], runs=1)
    preempt_once(hub, bob, job["id"], runs=2)
    done = wait_for(bob, hub, job["id"], FINAL, timeout=120)
    assert done["state"] == "succeeded", done
    assert events(bob, hub, job["id"]) == [
        "queued",
        *["running", "preempted", "queued"] * 2,
        "running",
        "succeeded",
    ]
    starts = runs_started(bob, hub, job["id"])
    assert starts[0] == 0 and 0 < starts[1] < starts[2] < STEPS, starts  # each run resumed
    log = follow_log(bob, hub, job["id"])[0]
    assert log.count("[gpuslice] checkpoint saved; stopping as asked") == 2, log

    through = submit(bob, hub, training(steps=STEPS, pause=0.01), name="ran through")
    assert wait_for(bob, hub, through["id"], FINAL, timeout=120)["state"] == "succeeded"
    assert runs_started(bob, hub, through["id"]) == [0]
    results = [
        re.findall(r"^result (\d+)$", follow_log(bob, hub, job_id)[0], re.MULTILINE)
        for job_id in (job["id"], through["id"])
    ]
    assert results[0] == results[1] == [str(sum(step * step for step in range(STEPS)))], results
