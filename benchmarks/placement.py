"""Placement benchmark: every policy on the four shared openb traces and on unseen synthetic mixes.

Run: ``.venv/bin/python benchmarks/placement.py [--seeds N] [--quick]`` (``make bench``). It prints a
table per workload, with each policy's unallocated GPUs as a ratio to FGD's in the same run, and
writes the figures to ``benchmarks/results/placement.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spawner.core.placement import POLICIES
from spawner.sim.openb import load_nodes, load_pods
from spawner.sim.paths import OPENB_NODES, OPENB_TRACES, openb_file, openb_pods
from spawner.sim.replay import compare
from spawner.sim.synthetic import MIXES, random_mix, synthetic_pods

RESULTS = Path(__file__).resolve().parent / "results" / "placement.json"


def print_table(title: str, summary: dict[str, dict[str, float]]) -> None:
    print(f"\n### {title}\n")
    print("| policy | alloc @100% | alloc final | unallocated GPUs | vs fgd | decisions/s |")
    print("|---|---:|---:|---:|---:|---:|")
    fgd = summary["fgd"]["unallocated_gpus_final"]
    for name, figures in summary.items():
        print(
            f"| {name} | {figures['alloc_ratio_at_100']:.4f} | {figures['alloc_ratio_final']:.4f} "
            f"| {figures['unallocated_gpus_final']:.1f} | {figures['unallocated_gpus_final'] / fgd:.3f} "
            f"| {figures['decisions_per_s']:.0f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fgd and default only, 2 seeds")
    args = parser.parse_args()
    policies = ["default", "fgd"] if args.quick else list(POLICIES)
    seeds = 2 if args.quick else args.seeds
    nodes_path = openb_file(OPENB_NODES)
    if not nodes_path.is_file():
        print(f"skipped: the shared openb traces are not at {nodes_path.parent}", file=sys.stderr)
        return 0
    nodes = load_nodes(nodes_path)
    workloads = {trace: load_pods(openb_pods(trace)) for trace in OPENB_TRACES}
    for name, mix in MIXES.items():
        workloads[f"synthetic {name}"] = synthetic_pods(mix, 8000, seed=7)
    for seed in (101, 202):
        workloads[f"synthetic random-{seed}"] = synthetic_pods(random_mix(seed), 8000, seed=seed)
    results = {}
    print(f"openb cluster: {len(nodes)} nodes, {sum(len(n.gpus) for n in nodes)} GPUs; {seeds} seeds each")
    for title, pods in workloads.items():
        summary = compare(nodes, pods, policies, seeds=seeds)
        results[title] = summary
        print_table(title, summary)
        sys.stdout.flush()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"seeds": seeds, "workloads": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
