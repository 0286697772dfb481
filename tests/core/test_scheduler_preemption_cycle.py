"""A guaranteed job that preempted borrowers gets the GPUs it preempted for.

Pass after pass, as the service runs them: each pass's starts run, its preemptions stop their
jobs after a grace period and queue them again. A group whose jobs are requeued ahead of the
guaranteed job (it used less, or its jobs have a higher priority) must not take those GPUs back as
borrowed work, or the guaranteed job preempts the next borrower, and so on for ever: it never
starts, and each borrower loses its work every round.
"""

import pytest

from spawner.core.incremental import IncrementalScheduler
from spawner.core.scheduler import GroupShare, Priority, RunningJob, schedule

from .test_scheduler import job, running_on, train_nodes

GRACE_S = 30.0
PASS_INTERVAL_S = 2.0


class Lab:
    """One node of two training GPUs, both held by group ``x``'s borrowed jobs; group ``a`` is
    guaranteed one GPU and has used more, so fair share puts ``x``'s queued jobs first."""

    def __init__(self, decide, borrower_priority=Priority.normal):
        self.decide = decide
        self.nodes = train_nodes(1, gpus=2)
        self.shares = {"a": GroupShare(guaranteed_gpus=1), "x": GroupShare(guaranteed_gpus=0)}
        self.usage = {"a": 1000.0, "x": 0.0}
        self.running = [
            running_on(
                job(name, group="x", at=at, priority=borrower_priority), "t0", [at], at + 1, borrowed=True
            )
            for at, name in enumerate(("x1", "x2"))
        ]
        self.queue = [job("a1", group="a", at=5, priority=Priority.normal)]
        self.stop_at: dict[str, float] = {}  # job id -> when its grace period ends
        self.preemptions = 0
        self.started: dict[str, float] = {}

    def run_pass(self, now: float) -> None:
        # Jobs whose grace period ended give their GPUs back and are queued again.
        for held in [held for held in self.running if self.stop_at.get(held.job.id, float("inf")) <= now]:
            self.running.remove(held)
            del self.stop_at[held.job.id]
            self.queue.append(held.job)
        decision = self.decide(
            self.nodes, self.running, self.queue, self.shares, self.usage, now, stopping=set(self.stop_at)
        )
        for start in decision.starts:
            self.queue.remove(start.job)
            self.running.append(RunningJob(start.job, start.placement, now, start.borrowed, start.pool))
            self.started[start.job.id] = now
        for preempt in decision.preemptions:
            self.stop_at[preempt.job_id] = now + GRACE_S
            self.preemptions += 1


@pytest.mark.parametrize("borrower_priority", [Priority.normal, Priority.high])
@pytest.mark.parametrize("form", ["schedule", "incremental"])
def test_the_guaranteed_job_starts_on_the_gpu_it_preempted_for(form, borrower_priority):
    decide = schedule if form == "schedule" else IncrementalScheduler().schedule
    lab = Lab(decide, borrower_priority)
    now = 10.0
    for _ in range(100):  # 200 s: several grace periods
        lab.run_pass(now)
        now += PASS_INTERVAL_S
    # One borrower was stopped for a1 (the newest, x2), and a1 started on its GPU once it came
    # back, within its guarantee; x2 waits, queued again, for a GPU nobody is guaranteed. A
    # borrower's higher priority does not let it take back the GPU a guarantee reclaimed.
    assert lab.preemptions == 1
    assert "a1" in lab.started and lab.started["a1"] <= 10.0 + GRACE_S + PASS_INTERVAL_S
    a1 = next(held for held in lab.running if held.job.id == "a1")
    assert not a1.borrowed
    assert [queued.id for queued in lab.queue] == ["x2"]


@pytest.mark.parametrize("borrower_priority", [Priority.normal, Priority.high])
def test_both_forms_decide_every_pass_of_the_cycle_alike(borrower_priority):
    incremental = IncrementalScheduler()
    decisions: list[tuple] = []

    def both(*args, **kwargs):
        decided = incremental.schedule(*args, **kwargs)
        expected = schedule(*args, **kwargs)
        assert decided == expected
        decisions.append((len(decided.starts), len(decided.preemptions)))
        return expected

    lab = Lab(both, borrower_priority)
    now = 10.0
    for _ in range(40):
        lab.run_pass(now)
        now += PASS_INTERVAL_S
    assert sum(starts for starts, _ in decisions) == 1


def test_the_borrower_queued_again_waits_behind_the_guaranteed_job_it_used_less_than():
    """The pass right after the grace period: the GPU is free, x2 is ahead in fair share, a1 is
    within its guarantee; a1 starts, and x2 waits saying so."""
    nodes = train_nodes(1, gpus=2)
    shares = {"a": GroupShare(guaranteed_gpus=1), "x": GroupShare(guaranteed_gpus=0)}
    x1 = running_on(job("x1", group="x", at=0), "t0", [0], started_at=1, borrowed=True)
    queue = [job("x2", group="x", at=1), job("a1", group="a", at=5)]
    decision = schedule(nodes, [x1], queue, shares, {"a": 1000.0, "x": 0.0}, now=42)
    assert [(start.job.id, start.borrowed) for start in decision.starts] == [("a1", False)]
    assert decision.preemptions == []
    # The pass considered a1 (within its guarantee) before x2 (a borrower), though x2's group
    # used less: the order and the positions say so.
    assert decision.order == ["a1", "x2"]
    assert decision.waiting["x2"].position == 0
