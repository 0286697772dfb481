"""``GET jobs`` assembles its answer from the ledger's bytes (``listed_jobs_json``): it must say
exactly what ``job_json`` says of the same jobs, queue fields included, in both views."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from spawner.ledger import Ledger
from spawner.ledger.jobs import BatchItem, JobSpec, JobStore
from spawner.service.queue_view import QueueSnapshot
from spawner.service.serialize import job_json, listed_jobs_json, to_json


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    with contextlib.closing(Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")) as ledger:
        ledger.create_schema()
        yield JobStore(ledger)


def test_a_listing_from_the_ledgers_bytes_says_what_job_json_says(store: JobStore) -> None:
    owners = ["ana", "ben", "ana", "chen", "ana", "ben"]
    store.submit_many(
        [
            BatchItem(
                JobSpec(
                    owner,
                    "vision" if owner == "ben" else None,
                    f'train "{index}" ÿ\x1e',
                    "print(1)\n",
                    "/tmp",
                    gpus=index % 3,
                    environment={"SEED": str(index), "odd": "\x1f\n"},
                    gpu_models=["A100"] if index % 2 else [],
                    time_limit_s=float("inf") if index == 5 else 3600.0,
                )
            )
            for index, owner in enumerate(owners)
        ]
    )
    records = store.list()
    running = records[1]
    store.transition(running.id, "running", "started", lease_id="lease-1", gpu_uuids=["GPU-1"], node="n1")
    waiting = [record for record in store.queued()][1:]  # the oldest queued came after the pass
    snapshot = QueueSnapshot.of_pass(
        1234.5,
        [record.id for record in reversed(waiting)],
        {record.id: f"waiting: reason {index}" for index, record in enumerate(waiting)},
        {record.id: record.owner for record in waiting},
    )
    for owner in (None, "ana"):
        everyone = owner is None
        expected = [
            job_json(record, snapshot, listing=True, everyone=everyone) for record in store.list(owner)
        ]
        listed = json.loads(listed_jobs_json(store.listing(owner), snapshot, everyone=everyone))
        assert listed == json.loads(to_json(expected))  # as GET jobs/{id} encodes one
        assert any(job["queue_position"] is not None for job in listed)
        assert any(job["state"] == "queued" and job["queue_position"] is None for job in listed)


def test_an_empty_listing_is_an_empty_array(store: JobStore) -> None:
    assert json.loads(listed_jobs_json(store.listing("nobody"), QueueSnapshot())) == []


def test_a_snapshot_reused_by_listings_never_serves_a_job_as_it_was(store: JobStore) -> None:
    """A pass's snapshot keeps each job's completed text for the listings after it: a job that
    changed since (started, cancelled) must be listed as it is now, in both views."""
    store.submit_many(
        [BatchItem(JobSpec("ana", None, f"job {index}", "pass\n", "/tmp")) for index in range(3)]
    )
    queued = store.queued()
    snapshot = QueueSnapshot.of_pass(
        10.0,
        [record.id for record in queued],
        {record.id: "waiting: no GPU free" for record in queued},
        {record.id: record.owner for record in queued},
    )
    for everyone in (True, False):
        before = json.loads(listed_jobs_json(store.listing("ana"), snapshot, everyone=everyone))
        assert [job["queue_position"] for job in before] == [2, 1, 0]  # newest first
    store.transition(queued[0].id, "running", "started", lease_id="lease-1", gpu_uuids=["GPU-1"], node="n1")
    store.transition(queued[1].id, "cancelled", "cancelled by its owner")
    for everyone in (True, False):
        after = json.loads(listed_jobs_json(store.listing("ana"), snapshot, everyone=everyone))
        expected = [
            job_json(record, snapshot, listing=True, everyone=everyone) for record in store.list("ana")
        ]
        assert after == json.loads(to_json(expected))
        assert [(job["state"], job["queue_position"]) for job in after] == [
            ("queued", 2),  # its place in that pass, which said nothing of the others since
            ("cancelled", None),
            ("running", None),
        ]
