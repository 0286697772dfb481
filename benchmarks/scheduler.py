"""Scheduler pass time: one ``schedule()`` over a large queue on a large training pool.

Run: ``.venv/bin/python benchmarks/scheduler.py [--jobs 10000] [--gpus 1000] [--repeat 3]``. It fills
the cluster with running jobs (some borrowed), queues ``--jobs`` jobs of mixed sizes, groups and
priorities, and prints the pass time next to a baseline measured in the same run: the time to sort
the queue into fair-share order alone, so the ratio says what the placement work costs on top.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

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
    groups = [f"g{k}" for k in range(8)]
    shares = {group: GroupShare(guaranteed_gpus=gpus // 16, borrow_limit_gpus=gpus // 4) for group in groups}
    running = []
    for node in nodes:  # ~90% of the GPUs busy, in 1-, 2- and 4-GPU jobs
        slot = 0
        while slot < per_node - 1:
            size = min(rng.choice([1, 2, 4]), per_node - 1 - slot)
            group = rng.choice(groups)
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
    queue = [
        BatchJob(
            f"q{i}",
            f"u{i % 50}",
            rng.choice(groups),
            rng.choice([1, 1, 1, 2, 4, 8]),
            rng.choice(list(Priority)),
            float(i),
            rng.choice([300.0, 3600.0, 86400.0]),
        )
        for i in range(jobs)
    ]
    usage = {group: rng.uniform(0, 1e6) for group in groups}
    return nodes, running, queue, shares, usage


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--gpus", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    nodes, running, queue, shares, usage = build(args.jobs, args.gpus, seed=1)
    passes, sorts = [], []
    for _ in range(args.repeat):
        started = time.perf_counter()
        fair_order(queue, usage, shares)
        sorts.append(time.perf_counter() - started)
        started = time.perf_counter()
        decision = schedule(nodes, running, queue, shares, usage, now=600.0)
        passes.append(time.perf_counter() - started)
    pass_s, sort_s = statistics.median(passes), statistics.median(sorts)
    print(
        f"{args.jobs} queued jobs, {len(nodes) * 8} GPUs, {len(running)} running jobs; "
        f"median of {args.repeat} passes"
    )
    print("| measure | seconds | ratio to sort |")
    print("|---|---:|---:|")
    print(f"| fair-share sort of the queue (baseline) | {sort_s:.4f} | 1.0 |")
    print(f"| full scheduler pass | {pass_s:.4f} | {pass_s / sort_s:.1f} |")
    print(
        f"started {len(decision.starts)}, preempting {len(decision.preemptions)}, "
        f"waiting {len(decision.waiting)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
