"""Scheduler pass time: ``schedule()`` and the incremental form over a large queue on a large pool.

Run: ``.venv/bin/python benchmarks/scheduler.py [--jobs 10000] [--gpus 1000] [--passes 20]``. It fills
the cluster with running jobs (some borrowed), queues ``--jobs`` jobs of mixed sizes, groups and
priorities, then runs ``--passes`` passes the way the service does: each pass applies the last
decision (its starts run, its preempted jobs stop and are queued again after a grace period of
``--grace`` passes), ``--churn`` running jobs end and as many new jobs are queued, and every group's
usage decays and grows. Every pass is decided twice, by ``schedule()`` (the reference, built from
scratch) and by one ``IncrementalScheduler`` kept across passes, and the two decisions must be
equal. Times are CPU seconds of this process. The baseline, measured in the same run, is the time to
sort the queue into fair-share order alone, so the ratios say what a pass costs next to that sort.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from spawner.core.incremental import IncrementalScheduler
from spawner.core.scheduler import (
    TRAIN_POOL,
    BatchJob,
    GroupShare,
    Priority,
    RunningJob,
    fair_order,
    schedule,
)
from spawner.core.units import GPU, GPUShare, Node, Placement

GROUPS = [f"g{k}" for k in range(8)]


def queued_job(rng: random.Random, name: str, owner: str, submitted_at: float) -> BatchJob:
    return BatchJob(
        name,
        owner,
        rng.choice(GROUPS),
        rng.choice([1, 1, 1, 2, 4, 8]),
        rng.choice(list(Priority)),
        submitted_at,
        rng.choice([300.0, 3600.0, 86400.0]),
    )


def build(jobs: int, gpus: int, seed: int):
    rng = random.Random(seed)
    per_node = 8
    nodes = [
        Node(
            f"n{i:04d}",
            128000,
            1 << 20,
            tuple(
                GPU(f"GPU-n{i}-{g}", f"n{i:04d}", g, "H100", 81920, frozenset({TRAIN_POOL}))
                for g in range(per_node)
            ),
        )
        for i in range(gpus // per_node)
    ]
    shares = {group: GroupShare(guaranteed_gpus=gpus // 16, borrow_limit_gpus=gpus // 4) for group in GROUPS}
    running = []
    for node in nodes:  # ~90% of the GPUs busy, in 1-, 2- and 4-GPU jobs
        slot = 0
        while slot < per_node - 1:
            size = min(rng.choice([1, 2, 4]), per_node - 1 - slot)
            group = rng.choice(GROUPS)
            job = BatchJob(
                f"r-{node.name}-{slot}",
                f"u-{group}",
                group,
                size,
                Priority.normal,
                0.0,
                rng.choice([600.0, 3600.0, 36000.0]),
            )
            shares_held = tuple(
                GPUShare(f"GPU-n{int(node.name[1:])}-{s}", 1000, 0) for s in range(slot, slot + size)
            )
            running.append(
                RunningJob(job, Placement(node.name, shares_held), rng.uniform(0, 500), rng.random() < 0.3)
            )
            slot += size
    queue = [queued_job(rng, f"q{i}", f"u{i % 50}", float(i)) for i in range(jobs)]
    usage = {group: rng.uniform(0, 1e6) for group in GROUPS}
    return nodes, running, queue, shares, usage


class Cluster:
    """The service's side of the benchmark: applies each decision, and the churn between passes."""

    def __init__(self, jobs: int, gpus: int, churn: int, grace: int, seed: int = 1):
        self.nodes, self.running, self.queue, self.shares, self.usage = build(jobs, gpus, seed)
        self.rng = random.Random(seed + 1)
        self.churn, self.grace = churn, grace
        self.now = 600.0
        self.stopping: dict[str, int] = {}  # job id -> the pass at which its process is gone
        self.passes = 0
        self.submitted = 0

    def args(self):
        return (self.nodes, self.running, self.queue, self.shares, self.usage, self.now)

    def apply(self, decision) -> None:
        self.passes += 1
        started = {start.job.id for start in decision.starts}
        self.queue = [job for job in self.queue if job.id not in started]
        self.running = self.running + [
            RunningJob(start.job, start.placement, self.now, start.borrowed, start.pool)
            for start in decision.starts
        ]
        for preempt in decision.preemptions:
            self.stopping[preempt.job_id] = self.passes + self.grace
        stopped = {job_id for job_id, gone_at in self.stopping.items() if gone_at <= self.passes}
        for job_id in stopped:
            del self.stopping[job_id]
        ended = set(self.rng.sample([held.job.id for held in self.running], self.churn))
        ended -= self.stopping.keys()
        requeued = [held.job for held in self.running if held.job.id in stopped]
        self.running = [held for held in self.running if held.job.id not in stopped | ended]
        self.queue = self.queue + requeued
        for _ in range(self.churn):
            self.submitted += 1
            self.queue.append(queued_job(self.rng, f"s{self.submitted}", "u-new", self.now))
        # Two seconds of the service's decay (a week's half-life) and of each group's GPUs held.
        held = {group: 0 for group in GROUPS}
        for running in self.running:
            held[running.job.group] += running.job.gpus
        decay = 0.5 ** (2.0 / (7 * 86400))
        self.usage = {group: usage * decay + held[group] * 2.0 for group, usage in self.usage.items()}
        self.now += 2.0


def timed(function, *args, **kwargs):
    """The result, and the CPU seconds this process spent on it: on a shared machine the time spent
    waiting for a core is not the pass's cost (and the pass runs in one thread)."""
    started = time.process_time()
    result = function(*args, **kwargs)
    return result, time.process_time() - started


def every_reason(decision) -> dict[str, str]:
    """What the service reads of every waiting job (its queue page), as it reads it."""
    return {job_id: place.reason for job_id, place in decision.waiting.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--gpus", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=20, help="passes after the first (steady state)")
    parser.add_argument("--churn", type=int, default=5, help="jobs ending and jobs queued per pass")
    parser.add_argument("--grace", type=int, default=15, help="passes a preempted job takes to stop")
    parser.add_argument("--policy", default="default", help="placement policy (default: the service's)")
    args = parser.parse_args()
    cluster = Cluster(args.jobs, args.gpus, args.churn, args.grace)
    incremental = IncrementalScheduler()
    sorts, references, passes, reads = [], [], [], []
    first = f"{args.jobs} queued jobs, {args.gpus // 8 * 8} GPUs, {len(cluster.running)} running jobs"
    starts = preemptions = 0
    backfill_blocked: list[int] = []
    for number in range(args.passes + 1):
        inputs = cluster.args()
        nodes, running, queue, shares, usage, now = inputs
        stopping = frozenset(cluster.stopping)
        _, sort_s = timed(fair_order, queue, usage, shares)
        policy = {"policy_name": args.policy, "stopping": stopping}
        reference, reference_s = timed(schedule, *inputs, **policy)
        decision, pass_s = timed(incremental.schedule, *inputs, **policy)
        _, read_s = timed(every_reason, decision)
        if decision != reference:
            print(f"pass {number}: the incremental decision differs from schedule()'s", file=sys.stderr)
            return 1
        sorts.append(sort_s)
        references.append(reference_s)
        passes.append(pass_s)
        reads.append(read_s)
        if number:
            starts += len(decision.starts)
            preemptions += len(decision.preemptions)
            # Jobs that fit but would delay the reserved one: each is asked of the placement policy
            # again (see benchmarks/README.md), so such passes cost as many placements.
            blocked = sum(place.reason.startswith("it would fit now") for place in decision.waiting.values())
            backfill_blocked.append(blocked)
        cluster.apply(decision)
    sort_s = statistics.median(sorts)
    steady, steady_reference, steady_reads = passes[1:], references[1:], reads[1:]
    rows = [
        ("fair-share sort of the queue (baseline, median of all passes)", sort_s),
        ("schedule(), first pass", references[0]),
        ("IncrementalScheduler, first (cold) pass", passes[0]),
        ("schedule(), steady state (median)", statistics.median(steady_reference)),
        ("IncrementalScheduler, steady state (median)", statistics.median(steady)),
        ("IncrementalScheduler, steady state (slowest)", max(steady)),
        ("reading every waiting reason of a steady pass (median)", statistics.median(steady_reads)),
    ]
    print(
        f"{first}; 1 first pass, "
        f"then {args.passes} passes with {args.churn} jobs ending and {args.churn} queued before each "
        f"({starts} starts, {preemptions} preemptions in them); every decision equal to schedule()'s"
    )
    slow = [
        (seconds, blocked)
        for seconds, blocked in zip(steady, backfill_blocked, strict=True)
        if seconds > 0.05
    ]
    print(
        f"policy {args.policy}; steady passes over 50 ms: {len(slow)} of {len(steady)}"
        + (f" (jobs held back by the reservation in them: {sorted(b for _, b in slow)})" if slow else "")
    )
    print("| measure | CPU seconds | ratio to sort |")
    print("|---|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.4f} | {seconds / sort_s:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
