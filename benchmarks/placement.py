"""Placement benchmark: every policy on the four shared openb traces and on unseen synthetic mixes.

Run: ``.venv/bin/python benchmarks/placement.py [--seeds N] [--quick] [--traces a,b]`` (``make bench``).
It prints a table per workload: allocation at 100% and 130% arrived beside the FGD artifact's
published 10-seed means (``../shared/data/fgd-published``; skipped with a message if absent), and
each policy's unallocated GPUs as a ratio to FGD's in the same run. The figures go to
``benchmarks/results/placement.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spawner.core.placement import POLICIES
from spawner.sim.openb import TraceError, load_nodes, load_pods, load_published
from spawner.sim.paths import OPENB_NODES, OPENB_TRACES, fgd_published_file, openb_file, openb_pods
from spawner.sim.replay import compare
from spawner.sim.synthetic import MIXES, random_mix, synthetic_pods

RESULTS = Path(__file__).resolve().parent / "results" / "placement.json"


def print_table(title: str, summary: dict[str, dict], published: dict[str, dict[int, float]]) -> None:
    print(f"\n### {title}\n")
    print(
        "| policy | alloc @100% | published | alloc @130% | published "
        "| unallocated GPUs | vs fgd | decisions/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    fgd = summary["fgd"]["unallocated_gpus_final"]
    for name, figures in summary.items():
        curve, theirs = figures["curve"], published.get(name, {})
        cells = [
            f"{mine[point]:.2f}%" if point in mine else "-"
            for point in (100, 130)
            for mine in (curve, theirs)
        ]
        print(
            f"| {name} | {' | '.join(cells)} | {figures['unallocated_gpus_final']:.1f} "
            f"| {figures['unallocated_gpus_final'] / fgd:.3f} | {figures['decisions_per_s']:.0f} |"
        )


def published_curves() -> dict[tuple[str, str], dict[int, float]]:
    path = fgd_published_file()
    if not path.is_file():
        print(f"published FGD figures: skipped, {path} not found", file=sys.stderr)
        return {}
    try:
        return load_published(path)
    except TraceError as error:
        print(f"published FGD figures: skipped, {error}", file=sys.stderr)
        return {}


def results_document(seeds: int, results: dict[str, dict]) -> dict:
    """The results file with this run's figures: over the file's own when it holds the same seed
    count, so that a run of some policies replaces their entries and keeps the other policies'
    (figures are deterministic per seed, so entries of one seed count are comparable across runs)."""
    try:
        document = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        document = {}
    if not isinstance(document, dict) or document.get("seeds") != seeds:
        return {"seeds": seeds, "workloads": results}
    workloads = document.setdefault("workloads", {})
    for title, summary in results.items():
        workloads.setdefault(title, {}).update(summary)
    return document


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 42.. (the artifact runs 42-51)")
    parser.add_argument("--quick", action="store_true", help="fgd and default only, 2 seeds")
    parser.add_argument(
        "--policies",
        help="comma-separated policies (default: all); fgd is always run, as the in-run baseline. "
        "The other policies' figures already in the results file are kept",
    )
    parser.add_argument("--traces", help="comma-separated openb traces (default: all four)")
    parser.add_argument("--no-synthetic", action="store_true", help="skip the synthetic mixes")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    args = parser.parse_args()
    if args.quick:
        policies = ["default", "fgd"]
    elif args.policies:
        policies = list(dict.fromkeys([*args.policies.split(","), "fgd"]))
        unknown = [name for name in policies if name not in POLICIES]
        if unknown:
            parser.error(f"unknown policies {', '.join(unknown)}; choose from {', '.join(POLICIES)}")
    else:
        policies = list(POLICIES)
    seeds = 2 if args.quick else args.seeds
    traces = args.traces.split(",") if args.traces else list(OPENB_TRACES)
    nodes_path = openb_file(OPENB_NODES)
    if not nodes_path.is_file():
        print(f"skipped: the shared openb traces are not at {nodes_path.parent}", file=sys.stderr)
        return 0
    nodes = load_nodes(nodes_path)
    workloads = {trace: load_pods(openb_pods(trace)) for trace in traces}
    if not args.no_synthetic:
        for name, mix in MIXES.items():
            workloads[f"synthetic {name}"] = synthetic_pods(mix, 8000, seed=7)
        for seed in (101, 202):
            workloads[f"synthetic random-{seed}"] = synthetic_pods(random_mix(seed), 8000, seed=seed)
    published = published_curves()
    results = {}
    print(f"openb cluster: {len(nodes)} nodes, {sum(len(n.gpus) for n in nodes)} GPUs; {seeds} seeds each")
    for title, pods in workloads.items():
        summary = compare(nodes, pods, policies, seeds=seeds, workers=args.workers)
        results[title] = summary
        print_table(
            title, summary, {policy: curve for (trace, policy), curve in published.items() if trace == title}
        )
        sys.stdout.flush()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results_document(seeds, results), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
