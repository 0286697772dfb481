"""Submissions in the ledger: idempotency keys, per-user limits, payloads dropped, starts undone.

Run on SQLite and on PostgreSQL (the ``ledger`` fixture); the concurrent ones check that the key
and the limits are decided in the submission's own locked transaction.
"""

from __future__ import annotations

import contextlib
import threading

import pytest
from sqlalchemy import text

from spawner.core.quota import QuotaPolicy
from spawner.core.units import SliceRequest, WorkloadClass
from spawner.ledger import Ledger
from spawner.ledger.jobs import (
    BatchItem,
    JobSpec,
    JobState,
    JobStateError,
    JobStore,
    SubmissionLimits,
    SubmissionUsage,
)


def run_threads(work, count: int) -> list[BaseException]:
    """Run ``work(index, barrier)`` in ``count`` threads started together; return their errors."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            work(index, barrier)
        except BaseException as error:  # reported to the test
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a worker hung"
    return errors


def spec(owner: str = "ana", payload: str = "print(1)\n", name: str = "train") -> JobSpec:
    return JobSpec(owner, None, name, payload, "/tmp", gpus=1)


@pytest.fixture
def store(ledger: Ledger) -> JobStore:
    return JobStore(ledger)


# ------------------------------------------------------------------------- idempotency keys


def test_the_same_key_and_body_answers_the_job_it_created(store: JobStore) -> None:
    first = store.submit_checked(spec(), idempotency_key="k-1", body_sha256="a" * 64)
    again = store.submit_checked(spec(), idempotency_key="k-1", body_sha256="a" * 64)
    assert first.created and first.refusal is None
    assert (again.created, again.refusal, again.record.id) == (False, None, first.record.id)
    assert [job.id for job in store.list()] == [first.record.id]
    assert len(store.events(first.record.id)) == 1
    found = store.find_submission("ana", "k-1", "a" * 64)
    assert (found.record.id, found.created) == (first.record.id, False)


def test_a_retry_answers_its_job_as_it_is_now(store: JobStore) -> None:
    first = store.submit_checked(spec(), idempotency_key="k-1", body_sha256="a" * 64)
    store.transition(first.record.id, JobState.running, "started")
    again = store.submit_checked(spec(), idempotency_key="k-1", body_sha256="a" * 64)
    assert (again.record.id, again.record.state) == (first.record.id, "running")


def test_the_same_key_with_another_body_is_refused_naming_the_first_job(store: JobStore) -> None:
    first = store.submit_checked(spec(), idempotency_key="k-1", body_sha256="a" * 64)
    other = store.submit_checked(spec(payload="print(2)\n"), idempotency_key="k-1", body_sha256="b" * 64)
    assert other.record is None and not other.created
    assert (other.refusal.rule, other.refusal.job_id) == ("idempotency_key", first.record.id)
    assert store.find_submission("ana", "k-1", "b" * 64).refusal.job_id == first.record.id
    assert len(store.list()) == 1


def test_keys_are_per_user_and_optional(store: JobStore) -> None:
    ana = store.submit_checked(spec("ana"), idempotency_key="shared", body_sha256="a" * 64)
    ben = store.submit_checked(spec("ben"), idempotency_key="shared", body_sha256="a" * 64)
    assert ana.created and ben.created and ana.record.id != ben.record.id
    assert store.find_submission("chen", "shared") is None
    without = [store.submit_checked(spec("ana")) for _ in range(3)]
    assert all(submission.created for submission in without)
    assert len({submission.record.id for submission in without}) == 3


def test_concurrent_sends_under_one_key_queue_one_job(store: JobStore) -> None:
    answers = []
    lock = threading.Lock()

    def work(index: int, barrier: threading.Barrier) -> None:
        barrier.wait()
        submission = store.submit_checked(spec(), idempotency_key="retried", body_sha256="a" * 64)
        with lock:
            answers.append(submission)

    assert run_threads(work, 6) == []
    assert len(store.list()) == 1
    assert sum(answer.created for answer in answers) == 1
    assert {answer.record.id for answer in answers} == {store.list()[0].id}


# ----------------------------------------------------------------------------- limits


def test_queued_jobs_are_limited_per_user_and_running_ones_do_not_count(store: JobStore) -> None:
    limits = SubmissionLimits(max_queued_jobs=2)
    first, second = (store.submit_checked(spec(), limits=limits) for _ in range(2))
    third = store.submit_checked(spec(), limits=limits)
    assert first.created and second.created
    assert third.record is None
    assert (third.refusal.rule, third.refusal.limit, third.refusal.usage) == ("max_queued_jobs", 2, 2)
    assert store.submit_checked(spec("ben"), limits=limits).created, "the limit is per user"
    store.transition(first.record.id, JobState.running, "started")
    assert store.submit_checked(spec(), limits=limits).created


def test_payload_bytes_of_unfinished_jobs_are_limited_and_freed_when_they_end(store: JobStore) -> None:
    limits = SubmissionLimits(max_payload_bytes=1000)
    big = store.submit_checked(spec(payload="x" * 600), limits=limits)
    refused = store.submit_checked(spec(payload="y" * 500), limits=limits)
    assert big.created
    assert (refused.refusal.rule, refused.refusal.limit) == ("max_payload_bytes", 1000)
    assert refused.refusal.usage == 600
    # A cell counts by the size the caller gives (its decoded payload), not its stored text.
    assert store.submit_checked(spec(payload="z" * 800), payload_bytes=400, limits=limits).created
    assert store.usage("ana") == SubmissionUsage(queued_jobs=2, payload_bytes=1000)

    store.transition(big.record.id, JobState.running, "started")
    assert store.usage("ana").payload_bytes == 1000, "a running job keeps its payload"
    ended = store.transition(big.record.id, JobState.succeeded, "exited 0")
    assert ended.payload == "" and store.get(big.record.id).payload == ""
    assert store.get(big.record.id).provenance == ended.provenance
    assert store.usage("ana") == SubmissionUsage(queued_jobs=1, payload_bytes=400)
    assert store.submit_checked(spec(payload="y" * 500), limits=limits).created


def test_a_cancelled_queued_job_gives_its_bytes_back(store: JobStore) -> None:
    limits = SubmissionLimits(max_payload_bytes=100)
    job = store.submit_checked(spec(payload="x" * 100), limits=limits).record
    assert store.submit_checked(spec(payload="y"), limits=limits).refusal is not None
    store.transition(job.id, JobState.cancelled, "cancelled by ana")
    assert store.submit_checked(spec(payload="y"), limits=limits).created


def test_concurrent_submissions_cannot_pass_a_limit_together(store: JobStore) -> None:
    """Six big submissions at once against room for three: exactly three are queued."""
    limits = SubmissionLimits(max_payload_bytes=3 * 1000)
    answers = []
    lock = threading.Lock()

    def work(index: int, barrier: threading.Barrier) -> None:
        barrier.wait()
        submission = store.submit_checked(spec(payload=str(index) * 1000), limits=limits)
        with lock:
            answers.append(submission)

    assert run_threads(work, 6) == []
    assert sum(answer.created for answer in answers) == 3
    assert {answer.refusal.rule for answer in answers if not answer.created} == {"max_payload_bytes"}
    assert store.usage("ana").payload_bytes == 3000


# ------------------------------------------------------------- submissions written together


def test_submissions_written_together_are_answered_as_if_made_one_after_the_other(store: JobStore) -> None:
    """The service's group commit: each job is checked in turn, the limits counting the earlier
    ones of the group, and a refusal refuses its own job only."""
    limits = SubmissionLimits(max_queued_jobs=2)
    answers = store.submit_each(
        [BatchItem(spec("ana")), BatchItem(spec("ana")), BatchItem(spec("ana")), BatchItem(spec("ben"))],
        limits=limits,
    )
    assert [answer.created for answer in answers] == [True, True, False, True]
    refusal = answers[2].refusal
    assert (refusal.rule, refusal.limit, refusal.usage) == ("max_queued_jobs", 2, 2)
    assert sorted(job.owner for job in store.list()) == ["ana", "ana", "ben"]
    assert store.submit_each([BatchItem(spec("ana"))], limits=limits)[0].refusal.rule == "max_queued_jobs"


def test_one_key_twice_in_a_group_is_one_job_and_another_body_under_it_is_refused(store: JobStore) -> None:
    answers = store.submit_each(
        [
            BatchItem(spec(), "k-1", "a" * 64),
            BatchItem(spec(), "k-1", "a" * 64),
            BatchItem(spec(payload="print(2)\n"), "k-1", "b" * 64),
            BatchItem(spec("ben"), "k-1", "a" * 64),
        ]
    )
    first = answers[0].record
    assert answers[0].created and (answers[1].created, answers[1].record.id) == (False, first.id)
    assert answers[2].record is None and (answers[2].refusal.rule, answers[2].refusal.job_id) == (
        "idempotency_key",
        first.id,
    )
    assert answers[3].created and answers[3].record.id != first.id
    assert len(store.list()) == 2
    again = store.submit_each([BatchItem(spec(), "k-1", "a" * 64)])[0]
    assert (again.created, again.record.id) == (False, first.id)


def test_a_group_whose_first_job_is_refused_lets_a_later_one_under_its_key_through(store: JobStore) -> None:
    limits = SubmissionLimits(max_payload_bytes=100)
    answers = store.submit_each(
        [BatchItem(spec(payload="x" * 500), "k-1", "a" * 64), BatchItem(spec(), "k-1", "b" * 64)],
        limits=limits,
    )
    assert answers[0].refusal.rule == "max_payload_bytes"
    assert (
        answers[1].created and store.find_submission("ana", "k-1", "b" * 64).record.id == answers[1].record.id
    )


def test_a_ledger_from_before_the_submissions_table_gains_it_and_counts_old_jobs(ledger_url: str) -> None:
    with contextlib.closing(Ledger(ledger_url)) as ledger:
        ledger.create_schema()
        store = JobStore(ledger)
        old = store.submit(spec(payload="x" * 300))
        with ledger.engine.begin() as connection:
            connection.execute(text("DROP TABLE job_submissions"))
    with contextlib.closing(Ledger(ledger_url)) as ledger:
        ledger.create_schema()  # the next start: the missing table is made, nothing else changes
        store = JobStore(ledger)
        assert store.get(old.id).payload == "x" * 300
        assert store.usage("ana") == SubmissionUsage(queued_jobs=1, payload_bytes=300)
        limits = SubmissionLimits(max_payload_bytes=400)
        refused = store.submit_checked(spec(payload="y" * 200), limits=limits)
        assert refused.refusal.usage == 300


# ------------------------------------------------------------------------- undone starts


def grant(ledger: Ledger, lease_id: str, job_id: str) -> None:
    result = ledger.allocate(
        lease_id, job_id, "ana", None, WorkloadClass.batch, SliceRequest(gpus=1, pool="train"), QuotaPolicy()
    )
    assert result.granted, result


@pytest.mark.parametrize("released", [False, True])
def test_a_start_that_never_ran_is_undone_and_its_run_id_granted_again(
    ledger: Ledger, store: JobStore, released: bool
) -> None:
    job = store.submit(spec())
    grant(ledger, f"{job.id}-1", job.id)
    if released:
        ledger.release(f"{job.id}-1")
    undone = store.undo_launch(job.id, f"{job.id}-1", "cut short")
    assert (undone.state, undone.attempts) == ("queued", 0)
    assert [(event.from_state, event.to_state, event.reason) for event in store.events(job.id)][-1] == (
        "queued",
        "queued",
        "cut short",
    )
    assert ledger.record(f"{job.id}-1") is None
    grant(ledger, f"{job.id}-1", job.id)  # the same run id again, as the next pass asks for it
    assert ledger.record(f"{job.id}-1").live


def test_only_the_next_run_of_a_queued_job_is_undone(ledger: Ledger, store: JobStore) -> None:
    job = store.submit(spec())
    with pytest.raises(JobStateError, match="not the run it would start next"):
        store.undo_launch(job.id, f"{job.id}-2", "cut short")
    grant(ledger, f"{job.id}-1", job.id)
    store.transition(job.id, JobState.running, "started", lease_id=f"{job.id}-1")
    with pytest.raises(JobStateError):
        store.undo_launch(job.id, f"{job.id}-1", "cut short")
    assert ledger.record(f"{job.id}-1").live
