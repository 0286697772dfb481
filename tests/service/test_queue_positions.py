"""Queue positions read while scheduling passes run: one pass per answer, never a duplicate or a gap.

One training GPU, held by a blocker job for the whole test, and a queue of jobs of three users at
three priorities. While passes run every 0.5 s the test lists the queue over and over (an admin's
view of everyone, each user's view of their own), cancels some jobs and submits others in between,
and checks every answer: the positions are 0..n-1 over what the caller sees, all from the pass
named by ``as_of``.
"""

from __future__ import annotations

import pytest
from harness.jobs import SLEEPS, cancel, get_job, submit, wait_for, wait_until
from harness.service_hubs import BORROWING_QUOTAS, start_sched_hub

pytestmark = pytest.mark.slow

QUOTAS = BORROWING_QUOTAS

USERS = ("alice", "bob", "carol")
PRIORITIES = ("high", "normal", "low", "normal")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = start_sched_hub(
        tmp_path_factory.mktemp("queue-positions-hub"),
        QUOTAS,
        ["--Inventory.train_gpu_indices=[1]"],
        hold_dev_gpu=True,
    )
    yield hub
    hub.stop()


def check_listing(answer: dict, owner: str | None) -> list[dict]:
    """The placed jobs of one listing, after checking they are numbered 0..n-1 by one pass."""
    placed = [job for job in answer["jobs"] if job["queue_position"] is not None]
    positions = sorted(job["queue_position"] for job in placed)
    assert positions == list(range(len(placed))), positions
    if placed:
        assert {job["queue_as_of"] for job in placed} == {answer["as_of"]}
        ahead = [job["jobs_ahead"] for job in placed]
        assert len(set(ahead)) == len(ahead), ahead
        # Positions follow the whole queue's order: fewer jobs ahead, a lower place.
        by_position = sorted(placed, key=lambda job: job["queue_position"])
        assert [job["jobs_ahead"] for job in by_position] == sorted(ahead)
    if owner is not None:
        assert {job["owner"] for job in answer["jobs"]} <= {owner}
    return placed


def test_positions_of_a_listing_come_from_one_pass_without_duplicates_or_gaps(hub):
    carol, admin = hub.as_user("carol"), hub.as_user("erin")
    sessions = {user: hub.as_user(user) for user in USERS}
    blocker = submit(carol, hub, SLEEPS, name="blocker", priority="low")
    wait_for(carol, hub, blocker["id"], ("running",))

    jobs = {user: [] for user in USERS}
    for round_ in range(4):
        for user in USERS:
            priority = "normal" if user != "alice" and PRIORITIES[round_] == "high" else PRIORITIES[round_]
            job = submit(sessions[user], hub, "print('x')\n", name=f"{user}-{round_}", priority=priority)
            jobs[user].append(job)

    def everyone_placed():
        answer = admin.get(hub.api + "jobs?all=1&state=queued", timeout=30).json()
        return answer if len(check_listing(answer, None)) == 12 else None

    wait_until(hub, "all 12 jobs placed by one pass", everyone_placed)

    seen_passes = set()
    for step in range(30):
        everyone = admin.get(hub.api + "jobs?all=1&state=queued", timeout=30).json()
        check_listing(everyone, None)
        seen_passes.add(everyone["as_of"])
        for user, session in sessions.items():
            own = session.get(hub.api + "jobs?state=queued", timeout=30).json()
            for job in check_listing(own, user):
                single = get_job(session, hub, job["id"])["job"]
                if single["queue_as_of"] == own["as_of"]:  # the same pass: the same place
                    assert single["queue_position"] == job["queue_position"]
                    assert single["jobs_ahead"] == job["jobs_ahead"]
        # Change the queue between passes: a cancel closes up the places behind it at once.
        if step in (5, 12, 20):
            user = USERS[step % 3]
            gone = jobs[user].pop(0)
            cancel(sessions[user], hub, gone["id"])
            after = admin.get(hub.api + "jobs?all=1&state=queued", timeout=30).json()
            assert gone["id"] not in {job["id"] for job in after["jobs"]}
            check_listing(after, None)
        if step in (8, 16):
            user = USERS[step % 3]
            jobs[user].append(submit(sessions[user], hub, "print('y')\n", name=f"{user}-late-{step}"))
    assert len(seen_passes) > 1, "the listings never spanned more than one pass"

    cancel(carol, hub, blocker["id"])
    for user, session in sessions.items():
        for job in jobs[user]:
            assert (
                wait_for(session, hub, job["id"], ("succeeded", "failed", "cancelled"), timeout=90)["state"]
                == "succeeded"
            )
