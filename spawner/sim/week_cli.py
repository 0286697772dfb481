"""``gpuslice sim week``: a scenario's week under each policy, as a table, JSON or plots."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .scenario import ScenarioError, load_scenario
from .trace_week import TraceMissing
from .week import POLICIES, WeekResult, as_json, replay_week

TABLE = (
    # (figure, heading, format)
    ("runs_per_week", "runs/week", "{:.0f}"),
    ("busy_hours_per_card_per_day", "busy h/card/day", "{:.1f}"),
    ("allocated_hours_per_card_per_day", "alloc h/card/day", "{:.1f}"),
    ("utilisation", "busy share", "{:.0%}"),
    ("allocated_gpu_hours", "alloc GPU-h", "{:.0f}"),
    ("busy_gpu_hours", "busy GPU-h", "{:.0f}"),
    ("mean_queue_wait_s", "mean queue wait", "{:.0f} s"),
    ("p95_queue_wait_s", "p95 queue wait", "{:.0f} s"),
    ("interactive_requests", "slice requests", "{:.0f}"),
    ("interactive_refused", "slices refused", "{:.0f}"),
    ("interactive_delayed", "slices delayed", "{:.0f}"),
    ("max_interactive_wait_s", "longest slice wait", "{:.0f} s"),
    ("preemptions", "preemptions", "{:.0f}"),
    ("gpu_hours_lost_to_preemption", "GPU-h lost to preemption", "{:.1f}"),
    ("passes", "scheduler passes", "{:.0f}"),
)


def _policies(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in POLICIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown policy {', '.join(unknown) or '(none)'}; choose among {', '.join(POLICIES)}"
        )
    return names


def add_week_command(sim_commands) -> None:
    week = sim_commands.add_parser(
        "week",
        help="replay a week of a lab through the scheduler under several policies",
        description="A scenario (cluster, groups, developers' day, training work) replayed on a virtual "
        "clock through the service's placement, quota checks, scheduler, reclaim and fair share.",
    )
    week.add_argument("--scenario", required=True, help="scenario YAML (see benchmarks/scenarios/)")
    week.add_argument(
        "--policy",
        type=_policies,
        default=list(POLICIES),
        help=f"comma-separated policies (default: all: {','.join(POLICIES)})",
    )
    week.add_argument("--seed", type=int, default=0, help="seed of the developers' arrivals (default 0)")
    week.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    week.add_argument(
        "--plot", metavar="DIR", help="write PNG figures (GPUs busy by pool, queue length) here"
    )
    week.set_defaults(handler=run_week)


def run_week(args: argparse.Namespace) -> int:
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as error:
        print(f"gpuslice sim week: {error}", file=sys.stderr)
        return 2
    results: dict[str, WeekResult] = {}
    seconds: dict[str, float] = {}
    for name in args.policy:
        started = time.perf_counter()
        try:
            results[name] = replay_week(scenario, name, args.seed)
        except TraceMissing as error:
            print(f"gpuslice sim week: skipped: {error}", file=sys.stderr)
            return 0
        seconds[name] = time.perf_counter() - started
    if args.plot:
        from .week_plots import write_plots

        for path in write_plots(scenario, results, Path(args.plot)):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(as_json(scenario, results), indent=2))
        return 0
    print(render_table(scenario, results, seconds))
    return 0


def render_table(scenario, results: dict[str, WeekResult], seconds: dict[str, float] | None = None) -> str:
    """Figures by policy, with each policy's runs a week against the first policy's, in one run."""
    names = list(results)
    kinds = scenario.node_kinds
    dev = sum(kind.count * kind.dev_gpus for kind in kinds)
    train = sum(kind.count * kind.train_gpus for kind in kinds)
    lines = [
        f"scenario {scenario.name}: {dev + train} GPUs ({dev} dev, {train} train), {scenario.days} day(s) "
        f"after {scenario.warmup_days} of warm-up, a pass every {scenario.timing.pass_interval_s:g} s"
    ]
    width = max(len(heading) for _, heading, _ in TABLE) + 2
    column = max(12, *(len(name) + 2 for name in names))
    lines.append(f"{'':<{width}}" + "".join(f"{name:>{column}}" for name in names))
    lines.append("-" * (width + column * len(names)))
    for key, heading, form in TABLE:
        cells = "".join(f"{form.format(results[name].figures[key]):>{column}}" for name in names)
        lines.append(f"{heading:<{width}}{cells}")
    baseline = results[names[0]].figures["runs_per_week"]
    ratios = "".join(
        f"{(results[name].figures['runs_per_week'] / baseline if baseline else float('nan')):>{column}.2f}"
        for name in names
    )
    lines.append(f"{'runs vs ' + names[0]:<{width}}{ratios}")
    if seconds:
        lines.append(
            f"{'replay time':<{width}}" + "".join(f"{seconds[name]:>{column - 2}.1f} s" for name in names)
        )
    return "\n".join(lines)
