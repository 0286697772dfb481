"""``POST jobs/batch``: many jobs in one call, queued in one ledger transaction, all or none.

A real hub and service (``harness.service_hubs``) with both GPUs held, so that every job stays
queued. Refusals name each refused job by its index and queue nothing; the per-user limits count
the batch's own jobs; an Idempotency-Key covers the whole batch.
"""

from __future__ import annotations

import uuid

import pytest
from harness.service_hubs import start_queue_only_hub

pytestmark = pytest.mark.slow

LIMITS = "--JobService.max_queued_jobs_per_user=6 --JobService.max_jobs_per_batch=8"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = start_queue_only_hub(tmp_path_factory.mktemp("batch-hub"), LIMITS)
    yield hub
    hub.stop()


def job(name: str, **fields) -> dict:
    return {"name": name, "script": "print(1)\n", "gpus": 1, "time_limit": "10m", **fields}


def queued_names(session, hub) -> list[str]:
    jobs = session.get(hub.api + "jobs", params={"state": "queued"}, timeout=30).json()["jobs"]
    return sorted(job["name"] for job in jobs)


def test_a_batch_is_queued_in_its_order_and_listed_like_single_jobs(hub):
    alice = hub.as_user("alice")
    answer = alice.post(hub.api + "jobs/batch", json={"jobs": [job(f"a{i}") for i in range(3)]}, timeout=60)
    assert answer.status_code == 201, answer.text
    jobs = answer.json()["jobs"]
    assert [job["name"] for job in jobs] == ["a0", "a1", "a2"]
    assert {job["state"] for job in jobs} == {"queued"}
    assert {job["owner"] for job in jobs} == {"alice"}
    assert all("payload" not in job and "provenance" not in job for job in jobs)
    assert len({job["created_at"] for job in jobs}) == 1, "one transaction"
    listed = alice.get(hub.api + "jobs", params={"state": "queued"}, timeout=30).json()["jobs"]
    assert {job["id"] for job in jobs} <= {job["id"] for job in listed}
    one = alice.get(hub.api + f"jobs/{jobs[0]['id']}", timeout=30).json()
    assert one["job"]["name"] == "a0" and one["events"][0]["to_state"] == "queued"


def test_refused_jobs_are_named_by_index_and_nothing_is_queued(hub):
    bob = hub.as_user("bob")
    bodies = [job("fine"), job("too big", gpus=64), job("fine too"), job("bad", time_limit="soon")]
    answer = bob.post(hub.api + "jobs/batch", json={"jobs": bodies}, timeout=60)
    assert answer.status_code == 400, answer.text
    refusal = answer.json()
    assert refusal["status"] == 400
    assert refusal["message"] == "2 of 4 jobs refused; nothing was queued"
    assert [error["index"] for error in refusal["errors"]] == [1, 3]
    assert refusal["errors"][0]["message"].startswith("gpus: no node has 64 GPUs")
    assert refusal["errors"][1]["message"].startswith("time_limit:")
    assert queued_names(bob, hub) == []


def test_the_per_user_limit_counts_the_batch_itself(hub):
    dana = hub.as_user("dana")
    assert dana.post(hub.api + "jobs", json=job("single"), timeout=30).status_code == 201
    answer = dana.post(hub.api + "jobs/batch", json={"jobs": [job(f"d{i}") for i in range(7)]}, timeout=60)
    assert answer.status_code == 400, answer.text
    errors = answer.json()["errors"]
    assert [error["index"] for error in errors] == [5, 6], "1 queued before + 5 of the batch = the limit of 6"
    assert "the limit is 6 queued jobs per user (JobService.max_queued_jobs_per_user)" in errors[0]["message"]
    assert queued_names(dana, hub) == ["single"]
    fits = dana.post(hub.api + "jobs/batch", json={"jobs": [job(f"d{i}") for i in range(5)]}, timeout=60)
    assert fits.status_code == 201, fits.text
    assert len(queued_names(dana, hub)) == 6


def test_an_idempotency_key_covers_the_whole_batch(hub):
    erin = hub.as_user("erin")
    key = {"Idempotency-Key": str(uuid.uuid4())}
    batch = {"jobs": [job("e0"), job("e1")]}
    first = erin.post(hub.api + "jobs/batch", json=batch, headers=key, timeout=60)
    assert first.status_code == 201, first.text
    again = erin.post(hub.api + "jobs/batch", json=batch, headers=key, timeout=60)
    assert again.status_code == 200, again.text
    assert [job["id"] for job in again.json()["jobs"]] == [job["id"] for job in first.json()["jobs"]]
    other = erin.post(
        hub.api + "jobs/batch", json={"jobs": [job("e0"), job("other")]}, headers=key, timeout=60
    )
    assert other.status_code == 409, other.text
    assert "was used before for a different submission" in other.json()["message"]
    longer = erin.post(
        hub.api + "jobs/batch", json={"jobs": [*batch["jobs"], job("e2")]}, headers=key, timeout=60
    )
    assert longer.status_code == 409, longer.text
    assert queued_names(erin, hub) == ["e0", "e1"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"jobs": []}, "jobs: 0 jobs; a batch has 1 to 8 (JobService.max_jobs_per_batch)"),
        ({"jobs": [job(f"x{i}") for i in range(9)]}, "jobs: 9 jobs; a batch has 1 to 8"),
        ([job("x")], 'body: give {"jobs": [...]}'),
        ({"jobs": [job("x")], "extra": 1}, 'body: give {"jobs": [...]}'),
    ],
)
def test_a_body_that_is_not_a_batch_is_refused_saying_what_to_send(hub, body, words):
    answer = hub.as_user("carol").post(hub.api + "jobs/batch", json=body, timeout=30)
    assert answer.status_code == 400, answer.text
    assert words in answer.json()["message"]


def test_only_users_submit_batches(hub):
    answer = hub.client(hub.service_token).post(hub.api + "jobs/batch", json={"jobs": [job("x")]}, timeout=30)
    assert answer.status_code == 403, answer.text
    assert "submit with a user's token" in answer.json()["message"]
