"""What one user may store: queued jobs and the payload bytes of unfinished jobs, per user.

Six 60 MiB cells sent at once used to be all accepted (the service grew to 1.8 GB, its database to
642 MB). Here, scaled down, the same: six concurrent submissions against limits with room for three
cells (bytes) or four jobs (queued), checked in the ledger transaction that queues each job, so
exactly as many get in as fit.
"""

from __future__ import annotations

import base64
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from harness.service_hubs import start_queue_only_hub

pytestmark = pytest.mark.slow

PYTHON = ".".join(map(str, sys.version_info[:3]))
CELL_BYTES = 300_000
LIMITS = "--JobService.max_queued_jobs_per_user=4 --JobService.max_payload_bytes_per_user=1000000"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = start_queue_only_hub(tmp_path_factory.mktemp("limits-hub"), LIMITS)
    yield hub
    hub.stop()


def cell_body(name: str) -> dict:
    payload = base64.b64encode(os.urandom(CELL_BYTES)).decode()
    return {"name": name, "cell": {"payload": payload, "python": PYTHON}, "gpus": 1, "time_limit": "10m"}


def submit_all_at_once(session, hub, bodies: list[dict]) -> list:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: session.post(hub.api + "jobs", json=body, timeout=60), bodies))


def statuses(answers) -> list[int]:
    return sorted(answer.status_code for answer in answers)


def test_concurrent_big_cells_past_the_payload_limit_are_refused_saying_what_to_do(hub):
    bob = hub.as_user("bob")
    answers = submit_all_at_once(bob, hub, [cell_body(f"big {number}") for number in range(6)])
    assert statuses(answers) == [201] * 3 + [400] * 3, [answer.text for answer in answers]
    refusal = next(answer.json()["message"] for answer in answers if answer.status_code == 400)
    assert "the unfinished jobs of user bob hold 878.9 KiB" in refusal  # 3 x 300,000 bytes
    assert "this one adds 293 KiB" in refusal
    assert "the limit is 976.6 KiB per user (JobService.max_payload_bytes_per_user)" in refusal
    assert "cancel those you no longer need" in refusal

    queued = bob.get(hub.api + "jobs", params={"state": "queued"}, timeout=30).json()["jobs"]
    assert len(queued) == 3
    cancelled = bob.post(hub.api + f"jobs/{queued[0]['id']}/cancel", timeout=30)
    assert cancelled.status_code == 200, cancelled.text
    assert bob.post(hub.api + "jobs", json=cell_body("fits again"), timeout=60).status_code == 201


def test_concurrent_submissions_past_the_queued_jobs_limit_are_refused(hub):
    alice = hub.as_user("alice")
    body = {"script": "print(1)\n", "gpus": 1, "time_limit": "10m"}
    bodies = [{"name": f"small {number}", **body} for number in range(6)]
    answers = submit_all_at_once(alice, hub, bodies)
    assert statuses(answers) == [201] * 4 + [400] * 2, [answer.text for answer in answers]
    refusal = next(answer.json()["message"] for answer in answers if answer.status_code == 400)
    assert (
        "user alice has 4 jobs queued, and the limit is 4 queued jobs per user"
        " (JobService.max_queued_jobs_per_user)" in refusal
    )
    assert "wait for some of them to start, or cancel those you no longer need" in refusal
    # The limit is each user's own.
    other = hub.as_user("erin").post(hub.api + "jobs", json=bodies[0], timeout=30)
    assert other.status_code == 201, other.text
