"""Many jobs in one transaction (``JobStore.submit_many``), and the reads of the hot paths.

Run on SQLite and on PostgreSQL (the ``ledger`` fixture). A batch is all or nothing: one refused
job and nothing of it is written; the per-user limits count the batch's own earlier jobs. The
listing and the scheduler's queue view read plain rows, and must say what the records say.
"""

from __future__ import annotations

import json

import pytest

from spawner.ledger import Ledger
from spawner.ledger.jobs import BatchItem, JobSpec, JobStore, SubmissionLimits
from spawner.ledger.listed_objects import ListedObjects


def spec(owner: str = "ana", payload: str = "print(1)\n", name: str = "train", **fields) -> JobSpec:
    return JobSpec(owner, fields.pop("group", None), name, payload, "/tmp", **fields)


@pytest.fixture
def store(ledger: Ledger) -> JobStore:
    return JobStore(ledger)


def test_a_batch_is_queued_in_its_order_with_one_time_and_one_event_each(store: JobStore) -> None:
    batch = store.submit_many([BatchItem(spec(name=f"job {index}")) for index in range(5)])
    assert batch.accepted and batch.refusals == []
    assert [item.created for item in batch.submissions] == [True] * 5
    assert [record.name for record in batch.records] == [f"job {index}" for index in range(5)]
    assert len({record.id for record in batch.records}) == 5
    assert len({record.created_at for record in batch.records}) == 1, "one transaction, one time"
    for record in batch.records:
        assert store.get(record.id) == record
        assert [(event.from_state, event.to_state) for event in store.events(record.id)] == [(None, "queued")]
    assert store.usage("ana").queued_jobs == 5


def test_one_refused_job_and_nothing_of_the_batch_is_written(store: JobStore) -> None:
    limits = SubmissionLimits(max_payload_bytes=100)
    items = [BatchItem(spec(payload="x" * 10)), BatchItem(spec(payload="y" * 200)), BatchItem(spec())]
    batch = store.submit_many(items, limits=limits)
    assert not batch.accepted
    assert [index for index, _ in batch.refusals] == [1]
    assert batch.refusals[0][1].rule == "max_payload_bytes"
    assert all(item.record is None and not item.created for item in batch.submissions)
    assert store.list() == []
    assert store.usage("ana").queued_jobs == 0


def test_the_limits_count_the_batch_itself(store: JobStore) -> None:
    store.submit_checked(spec())
    limits = SubmissionLimits(max_queued_jobs=3)
    batch = store.submit_many([BatchItem(spec()) for _ in range(4)], limits=limits)
    # One queued before, so the batch's first two fit and its third and fourth pass the limit.
    assert [(index, refusal.rule, refusal.usage) for index, refusal in batch.refusals] == [
        (2, "max_queued_jobs", 3),
        (3, "max_queued_jobs", 3),
    ]
    assert len(store.list()) == 1
    assert store.submit_many([BatchItem(spec()) for _ in range(2)], limits=limits).accepted
    assert len(store.list()) == 3


def test_payload_bytes_are_summed_across_the_batch_per_owner(store: JobStore) -> None:
    limits = SubmissionLimits(max_payload_bytes=250)
    mixed = [BatchItem(spec("ana"), payload_bytes=100), BatchItem(spec("ben"), payload_bytes=200)]
    mixed += [BatchItem(spec("ana"), payload_bytes=100), BatchItem(spec("ben"), payload_bytes=100)]
    batch = store.submit_many(mixed, limits=limits)
    assert [(index, refusal.rule, refusal.usage) for index, refusal in batch.refusals] == [
        (3, "max_payload_bytes", 200)
    ], "ana's 200 bytes fit; ben's second job would make 300"
    assert store.submit_many(mixed[:3], limits=limits).accepted


def test_a_batch_retried_under_its_keys_answers_the_same_jobs(store: JobStore) -> None:
    items = [BatchItem(spec(name=f"j{index}"), f"batch-1/{index}", "a" * 64) for index in range(3)]
    first = store.submit_many(items)
    again = store.submit_many(items, limits=SubmissionLimits(max_queued_jobs=1))
    assert again.accepted, "a retry is answered whatever the limits say now"
    assert [item.created for item in again.submissions] == [False] * 3
    assert [record.id for record in again.records] == [record.id for record in first.records]
    assert len(store.list()) == 3


def test_a_reused_key_with_another_body_refuses_the_batch(store: JobStore) -> None:
    first = store.submit_checked(spec(), idempotency_key="k/0", body_sha256="a" * 64)
    items = [BatchItem(spec(), "k/0", "b" * 64), BatchItem(spec(), "k/1", "b" * 64)]
    batch = store.submit_many(items)
    assert [(index, refusal.rule, refusal.job_id) for index, refusal in batch.refusals] == [
        (0, "idempotency_key", first.record.id)
    ]
    assert [record.id for record in store.list()] == [first.record.id]


def test_an_empty_batch_writes_nothing(store: JobStore) -> None:
    batch = store.submit_many([])
    assert batch.accepted and batch.submissions == ()
    assert store.list() == []


def test_a_large_batch_goes_in_one_transaction(store: JobStore) -> None:
    batch = store.submit_many([BatchItem(spec(f"user{index % 7}")) for index in range(1200)])
    assert batch.accepted and len(batch.records) == 1200
    assert len(store.queue()) == 1200


def test_the_listing_shows_what_the_records_show_without_payload_or_provenance(store: JobStore) -> None:
    environment = {"SEED": "1"}
    jobs = [
        spec(environment=environment, gpu_models=["A100"], provenance={"cell": "x"}),
        spec(group="vision", priority="high", gpus=2),
        spec("ben"),
    ]
    store.submit_many([BatchItem(job) for job in jobs])
    running = store.list(owner="ana")[0]
    store.transition(running.id, "running", "started", lease_id=f"{running.id}-1", gpu_uuids=["g0"], node="n")
    for owner, states, limit in [
        ("ana", None, None),
        ("ana", ["queued"], None),
        (None, None, 2),
        (None, None, None),
    ]:
        expected = [record.to_dict(include_provenance=False) for record in store.list(owner, states, limit)]
        listed = store.listing(owner, states, limit)
        assert [json.loads(job.json_object) for job in listed] == expected
        assert [(job.id, job.state) for job in listed] == [(job["id"], job["state"]) for job in expected]


def test_the_queue_view_is_the_queued_records_as_the_scheduler_sees_them(store: JobStore) -> None:
    jobs = [spec(gpu_models=["A100", "H100"], cpu_milli=500), spec("ben", priority="low", gpus=0), spec()]
    store.submit_many([BatchItem(job) for job in jobs])
    store.submit_checked(spec("chen", group="vision", time_limit_s=60.0))
    first = store.queued()[0]
    store.transition(first.id, "running", "started")
    assert store.queue() == [record.as_batch_job() for record in store.queued()]
    assert first.id not in {job.id for job in store.queue()}


def test_a_listing_shows_each_job_as_it_is_now_whoever_changed_it(ledger: Ledger) -> None:
    """Listings keep the objects of the job versions they showed (``JobStore.listed_objects``); a
    job changed since, by this store or by another process's store on the same database, is shown
    as it is now, through the whole cycle queued, running, preempted and queued again."""
    here, elsewhere = JobStore(ledger), JobStore(ledger)
    here.submit_many([BatchItem(spec(name=f"job {index}")) for index in range(3)])
    job = here.list("ana")[-1]

    def shown() -> dict:
        listed = {listed.id: json.loads(listed.json_object) for listed in here.listing("ana")}
        assert list(listed.values()) == [
            record.to_dict(include_provenance=False) for record in here.list("ana")
        ]
        return listed[job.id]

    assert shown()["state"] == "queued"
    for state, reason in [
        ("running", "started"),
        ("preempted", "preempted by alice"),
        ("queued", "requeued"),
    ]:
        elsewhere.transition(job.id, state, reason)
        now = shown()
        assert (now["state"], now["reason"], now["attempts"]) == (state, reason, 1)
    elsewhere.transition(job.id, "running", "started again")
    assert (shown()["state"], shown()["attempts"]) == ("running", 2)


def test_listings_longer_than_what_is_kept_are_whole(store: JobStore) -> None:
    store.listed_objects = ListedObjects(capacity=3)
    store.submit_many([BatchItem(spec(name=f"job {index}")) for index in range(7)])
    for _ in range(2):
        listed = store.listing("ana")
        assert [json.loads(job.json_object) for job in listed] == [
            record.to_dict(include_provenance=False) for record in store.list("ana")
        ]
        assert len(store.listed_objects) <= 3
