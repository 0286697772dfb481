"""Jobs written by several threads at once, on one SQLite file and on PostgreSQL.

Job writes take the allocator lock, so nothing may be lost (every submission and every event is
there afterwards) and a race for the same transition has exactly one winner.
"""

from __future__ import annotations

import random
import threading
from collections import Counter

from spawner.ledger import Ledger
from spawner.ledger.jobs import JobSpec, JobState, JobStateError, JobStore

THREADS = 4
JOBS_PER_THREAD = 15
ENDINGS = [
    [JobState.running, JobState.succeeded],
    [JobState.running, JobState.failed],
    [JobState.cancelled],
    [JobState.running, JobState.preempted, JobState.queued, JobState.running, JobState.succeeded],
    [],  # left queued
]


def run_threads(work, count: int = THREADS) -> list[BaseException]:
    """Run ``work(index, barrier)`` in ``count`` threads started together; return their errors."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            work(index, barrier)
        except BaseException as error:  # reported to the test below
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a worker hung"
    return errors


def test_threads_submitting_and_transitioning_lose_nothing(ledger: Ledger) -> None:
    store = JobStore(ledger)
    paths: dict[str, list[JobState]] = {}
    paths_lock = threading.Lock()

    def work(index: int, barrier: threading.Barrier) -> None:
        rng = random.Random(index)
        barrier.wait()
        mine = []
        for number in range(JOBS_PER_THREAD):
            job = store.submit(JobSpec(f"user{index}", None, f"job {number}", "print(1)", "/tmp"))
            path = ENDINGS[rng.randrange(len(ENDINGS))]
            with paths_lock:
                paths[job.id] = path
            mine.append((job.id, iter(path)))
            # interleave: move one of this thread's earlier jobs a step on
            for job_id, steps in rng.sample(mine, k=min(2, len(mine))):
                step = next(steps, None)
                if step is not None:
                    store.transition(job_id, step, f"{step.value} by thread {index}")
        for job_id, steps in mine:
            for step in steps:
                store.transition(job_id, step, f"{step.value} by thread {index}")

    assert run_threads(work) == []

    jobs = {job.id: job for job in store.list()}
    assert set(jobs) == set(paths) and len(paths) == THREADS * JOBS_PER_THREAD
    for job_id, path in paths.items():
        events = store.events(job_id)
        assert [event.to_state for event in events] == ["queued", *(state.value for state in path)]
        assert [event.from_state for event in events[1:]] == [event.to_state for event in events[:-1]]
        assert jobs[job_id].state == events[-1].to_state
        assert jobs[job_id].attempts == path.count(JobState.running)
    assert {job.id for job in store.queued()} == {job_id for job_id, path in paths.items() if not path}


def test_a_race_for_the_same_transition_has_one_winner(ledger: Ledger) -> None:
    store = JobStore(ledger)
    job_ids = [store.submit(JobSpec("ana", None, f"job {n}", "print(1)", "/tmp")).id for n in range(10)]
    won: Counter[str] = Counter()
    won_lock = threading.Lock()

    def work(index: int, barrier: threading.Barrier) -> None:
        for job_id in job_ids:
            barrier.wait()
            try:
                store.transition(
                    job_id, JobState.running, f"started by scheduler {index}", lease_id=f"lease-{index}"
                )
            except JobStateError:
                continue
            with won_lock:
                won[job_id] += 1

    assert run_threads(work) == []

    assert won == Counter({job_id: 1 for job_id in job_ids})
    for job_id in job_ids:
        record = store.get(job_id)
        events = store.events(job_id)
        assert record.attempts == 1 and len(events) == 2
        assert record.lease_id == f"lease-{events[-1].reason.rsplit(' ', 1)[-1]}"
