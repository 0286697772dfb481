"""Queue order through the REST API: strict priority between levels, fair share between groups
inside a level, and fair-share usage that outlives a killed service.

Two simulated GPUs on one node: index 0 in the dev pool, held whole by an interactive lease for the
whole module, and index 1, the one training GPU every job queues for. Neither researchers (alice)
nor students (bob) have a guarantee, so their weights are equal and only their decayed usage
orders them; carol, in no group, holds the training GPU while the queue builds up.
"""

from __future__ import annotations

import os
import signal

import pytest
from harness.jobs import FINAL, SLEEPS, cancel, get_job, submit, wait_for, wait_until
from harness.service_hubs import BORROWING_QUOTAS, start_sched_hub

pytestmark = pytest.mark.slow

QUOTAS = BORROWING_QUOTAS

WORKS_A_WHILE = """\
import time
time.sleep(8)
print("worked 8 s", flush=True)
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = start_sched_hub(
        tmp_path_factory.mktemp("fair-share-hub"),
        QUOTAS,
        ["--Inventory.train_gpu_indices=[1]"],
        hold_dev_gpu=True,
    )
    yield hub
    hub.stop()


def positions(hub, session, jobs: dict[str, dict]) -> dict[str, int] | None:
    """Queue position of each job once one scheduling pass has placed them all, else None.

    One listing, so every position comes from the same pass: read job by job, a pass that ran
    between two reads (one that had not yet seen the last submissions, then one that had) could
    give two jobs the same place.
    """
    listing = session.get(hub.api + "jobs?all=1&state=queued", timeout=30).json()["jobs"]
    by_id = {job["id"]: job["queue_position"] for job in listing}
    found = {name: by_id.get(job["id"]) for name, job in jobs.items()}
    return None if None in found.values() else found


def block_the_training_gpu(hub) -> dict:
    carol = hub.as_user("carol")
    blocker = submit(carol, hub, SLEEPS, name="blocker")
    wait_for(carol, hub, blocker["id"], ("running",))
    return blocker


def test_priority_first_then_the_group_that_used_less_goes_first(hub):
    alice, bob, admin = hub.as_user("alice"), hub.as_user("bob"), hub.as_user("erin")
    # Researchers use the training GPU for a while; students have used nothing yet.
    work = submit(alice, hub, WORKS_A_WHILE, name="researchers-use-the-gpu")
    assert wait_for(alice, hub, work["id"], FINAL, timeout=60)["state"] == "succeeded"
    blocker = block_the_training_gpu(hub)

    queued = {
        "alice-normal": submit(alice, hub, "print('a')\n", name="alice-normal"),
        "bob-normal": submit(bob, hub, "print('b')\n", name="bob-normal"),
        "alice-high": submit(alice, hub, "print('h')\n", name="alice-high", priority="high"),
        "bob-low": submit(bob, hub, "print('l')\n", name="bob-low", priority="low"),
    }
    order = wait_until(hub, "every job placed in the queue", lambda: positions(hub, admin, queued))
    # High before normal before low whatever the usage; inside "normal", bob's group (no usage
    # yet) goes before alice's, although alice submitted first.
    assert order == {"alice-high": 0, "bob-normal": 1, "alice-normal": 2, "bob-low": 3}
    reason = get_job(alice, hub, queued["alice-normal"]["id"])["job"]["waiting_reason"]
    assert "1 job of higher priority ahead" in reason and "1 job of the same priority ahead" in reason

    cancel(hub.as_user("carol"), hub, blocker["id"])
    done = {name: wait_for(admin, hub, job["id"], FINAL, timeout=60) for name, job in queued.items()}
    assert all(job["state"] == "succeeded" for job in done.values()), done
    runs = sorted(done, key=lambda name: done[name]["started_at"])
    assert runs == ["alice-high", "bob-normal", "alice-normal", "bob-low"]


def test_fair_share_usage_survives_a_killed_service(hub):
    """Runs after the test above: researchers have used far more GPU time than students."""
    alice, bob, admin = hub.as_user("alice"), hub.as_user("bob"), hub.as_user("erin")
    old_pid = hub.service_pid()
    assert old_pid is not None, hub.log()
    os.kill(old_pid, signal.SIGKILL)
    hub.wait_for_service_restart(old_pid)

    blocker = block_the_training_gpu(hub)
    queued = {
        "alice": submit(alice, hub, "print('a')\n", name="alice-after-restart"),
        "bob": submit(bob, hub, "print('b')\n", name="bob-after-restart"),
    }
    order = wait_until(hub, "both jobs placed in the queue", lambda: positions(hub, admin, queued))
    # A service that forgot the usage would order them by submission: alice first.
    assert order == {"bob": 0, "alice": 1}
    assert "read back from the ledger" in hub.log_path.read_text()
    metrics = hub.as_user("dana").get(hub.api + "metrics", timeout=30).text  # dana is a hub admin
    usage = {
        group: float(line.rsplit(" ", 1)[1])
        for group in ("researchers", "students")
        for line in metrics.splitlines()
        if line.startswith(f'gpuslice_fair_share_usage_gpu_seconds{{group="{group}"}}')
    }
    # Students' jobs were too short for a pass to see them running: they may have no figure at all.
    assert usage["researchers"] > usage.get("students", 0.0), usage
    cancel(hub.as_user("carol"), hub, blocker["id"])
    for job in queued.values():
        assert wait_for(admin, hub, job["id"], FINAL, timeout=60)["state"] == "succeeded"
