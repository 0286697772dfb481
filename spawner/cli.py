"""The ``gpuslice`` command: replaying placement traces, checking profiles, and batch jobs
(submit, list, logs, cancel) through the service's REST client."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from spawner.core.placement import POLICIES, UnknownPolicyError
from spawner.core.text import escape_controls
from spawner.core.vocabulary import PRIORITIES, TERMINAL_STATES, JobState, Priority

if TYPE_CHECKING:
    from spawner.config.profiles import ProfileSet


def _policy_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in POLICIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown policy {', '.join(unknown) or '(none)'}; choose from {', '.join(POLICIES)}"
        )
    return names


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _sim_place(args: argparse.Namespace) -> int:
    from spawner.sim.openb import TraceError, load_nodes, load_pods
    from spawner.sim.paths import OPENB_NODES, openb_file, openb_pods
    from spawner.sim.replay import compare

    nodes_path = Path(args.nodes) if args.nodes else openb_file(OPENB_NODES)
    pods_path = Path(args.pods) if args.pods else openb_pods("default")
    for path, flag in ((nodes_path, "--nodes"), (pods_path, "--pods")):
        if not path.is_file():
            print(f"gpuslice sim place: {path} not found; pass {flag} CSV", file=sys.stderr)
            return 2
    try:
        nodes = load_nodes(nodes_path)
        pods = load_pods(pods_path)
    except TraceError as error:
        print(f"gpuslice sim place: {error}", file=sys.stderr)
        return 2
    summary = compare(nodes, pods, args.policy, seeds=args.seeds, workers=args.workers)
    if args.json:
        print(
            json.dumps(
                {"policies": summary, "trace": str(pods_path), "nodes": str(nodes_path), "seeds": args.seeds},
                indent=2,
            )
        )
        return 0
    total_gpus = sum(len(node.gpus) for node in nodes)
    print(
        f"trace {pods_path.name}: {len(pods)} tasks on {len(nodes)} nodes, {total_gpus} GPUs; "
        f"{args.seeds} seed(s), inflated to 130% of GPU capacity"
    )
    published = _published_curves(pods_path)
    baseline = summary.get("fgd")
    header = (
        f"{'policy':<10} {'alloc@100%':>10} {'published':>9} {'alloc@130%':>10} {'published':>9} "
        f"{'unalloc GPUs':>12} {'decisions/s':>11} {'unalloc vs fgd':>14}"
    )
    print(header)
    print("-" * len(header))
    for name, figures in summary.items():
        versus = ""
        if baseline and baseline["unallocated_gpus_final"]:
            versus = f"{figures['unallocated_gpus_final'] / baseline['unallocated_gpus_final']:.3f}x"
        curve = figures.get("curve", {})
        theirs = published.get(name, {}) if isinstance(published, dict) else {}
        cells = [f"{curve[point]:.2f}%" if point in curve else "-" for point in (100, 130)] + [
            f"{theirs[point]:.2f}%" if point in theirs else "-" for point in (100, 130)
        ]
        print(
            f"{name:<10} {cells[0]:>10} {cells[2]:>9} {cells[1]:>10} {cells[3]:>9} "
            f"{figures['unallocated_gpus_final']:>12.1f} {figures['decisions_per_s']:>11.0f} {versus:>14}"
        )
    if isinstance(published, str):
        print(published)
    else:
        print("published: the FGD artifact's 10-seed means for this trace (Weng et al., ATC '23)")
    return 0


def _published_curves(pods_path: Path) -> dict[str, dict[int, float]] | str:
    """The artifact's published curves for the trace in ``pods_path``, by our policy name; or a
    sentence saying why there are none."""
    from spawner.sim.openb import TraceError, load_published
    from spawner.sim.paths import fgd_published_file, trace_name

    path = fgd_published_file()
    if not path.is_file():
        return f"published FGD figures: skipped, {path} not found"
    try:
        curves = load_published(path)
    except TraceError as error:
        return f"published FGD figures: skipped, {error}"
    trace = trace_name(pods_path)
    mine = {policy: curve for (name, policy), curve in curves.items() if name == trace}
    return mine or f"published FGD figures: none for trace {trace!r} in {path}"


PROFILES_DIR = Path("profiles")
REPO_PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"


def _profiles_dir(given: str | None) -> Path:
    """The directory named, else ./profiles, else the repository's profiles/ (the shipped examples)."""
    if given:
        return Path(given)
    return PROFILES_DIR if PROFILES_DIR.is_dir() else REPO_PROFILES_DIR


def _load_profiles_or_report(args: argparse.Namespace) -> ProfileSet | None:
    """The directory's ProfileSet, or ``None`` after printing every problem to stderr."""
    from spawner.config.profiles import ProfileConfigError, load_profiles

    directory = _profiles_dir(args.directory)
    try:
        return load_profiles(directory)
    except ProfileConfigError as error:
        for line in error.errors:
            print(line, file=sys.stderr)
        count = len(error.errors)
        print(
            f"gpuslice profiles: {count} problem{'s' if count > 1 else ''} in {directory}",
            file=sys.stderr,
        )
        return None


def _profiles_check(args: argparse.Namespace) -> int:
    profile_set = _load_profiles_or_report(args)
    if profile_set is None:
        return 1
    print(
        f"ok: {len(profile_set)} profiles, {profile_set.quota_entries} quota entries "
        f"in {profile_set.directory}"
    )
    return 0


def _profiles_list(args: argparse.Namespace) -> int:
    profile_set = _load_profiles_or_report(args)
    if profile_set is None:
        return 1
    rows = [
        {
            "slug": profile.slug,
            "display_name": profile.display_name,
            "milli_gpu": profile.milli_gpu,
            "gpus": profile.gpus,
            "groups": sorted(profile.groups),
        }
        for profile in profile_set
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [("slug", "display name", "milli-GPU", "whole GPUs", "groups")]
    for row in rows:
        table.append(
            (
                row["slug"],
                row["display_name"],
                str(row["milli_gpu"] or "-"),
                str(row["gpus"] or "-"),
                ", ".join(row["groups"]) or "everyone",
            )
        )
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]))]
    for number, line in enumerate(table):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if number == 0:
            print("  ".join("-" * width for width in widths))
    return 0


def add_profiles_commands(commands: argparse._SubParsersAction) -> None:
    """``gpuslice profiles check|list``: what an admin runs after editing profiles/*.yaml."""
    profiles = commands.add_parser("profiles", help="check and list the profiles and quotas")
    profile_commands = profiles.add_subparsers(dest="profiles_command", required=True)
    directory_help = "the profiles directory (default: ./profiles, else the repository's profiles/)"
    check = profile_commands.add_parser(
        "check",
        help="validate every profiles/*.yaml file and report each problem with its file and line",
    )
    check.add_argument("directory", nargs="?", help=directory_help)
    check.set_defaults(handler=_profiles_check)
    listing = profile_commands.add_parser("list", help="show the profiles users can choose from")
    listing.add_argument("directory", nargs="?", help=directory_help)
    listing.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    listing.set_defaults(handler=_profiles_list)


# ------------------------------------------------------------------------------------ jobs


def _client(args: argparse.Namespace):
    from spawner.client import GPUSliceClient

    return GPUSliceClient(service_url=args.service_url)


def printable(value: object) -> str:
    """``value`` as text with its control characters escaped (``\\x1b``, ``\\n``): what other users
    wrote (a job's name, a reason) is shown, but never drives the terminal (escape sequences that
    move the cursor, recolour or retitle it) nor breaks the table into lines of its own."""
    return escape_controls(str(value))


def _job_line(job: dict) -> str:
    gpus = f"{job.get('gpus', 0)} GPU"
    job_id, state, priority, name = (
        printable(job.get(field, "")) for field in ("id", "state", "priority", "name")
    )
    return f"{job_id}  {state:<10} {gpus:<7} {priority:<7} {name}"


def _jobs_submit(args: argparse.Namespace) -> int:
    from spawner.client import job_state, new_idempotency_key

    path = Path(args.file)
    try:
        script = path.read_text()
    except OSError as error:
        print(f"gpuslice jobs submit: cannot read {path}: {error.strerror or error}", file=sys.stderr)
        return 2
    client = _client(args)

    def retrying(error, delay_s: float) -> None:
        # The service may have stored the job already: the same key makes the next send answer it.
        print(
            f"gpuslice jobs submit: no answer ({printable(error)}); sending it again in {delay_s:g} s"
            " (under the same idempotency key, so it is queued once)",
            file=sys.stderr,
        )

    job = client.submit(
        script,
        # One key for this submission and every resend of it (see spawner.client).
        idempotency_key=new_idempotency_key(),
        on_retry=retrying,
        name=args.name or path.name,
        gpus=args.gpus,
        priority=args.priority,
        time_limit=args.time,
        workdir=str(Path.cwd()),
        provenance={
            "file": str(path.resolve()),
            "cwd": str(Path.cwd()),
            "submitted_by": "gpuslice jobs submit",
        },
    )
    job = job.get("job", job)
    if args.wait:
        if not args.json:
            print(f"submitted {job['id']}; waiting for it to end", file=sys.stderr)
            for text in client.follow_logs(job["id"]):
                sys.stdout.write(text)
                sys.stdout.flush()
        answer = client.wait(job["id"])
        job = answer.get("job", answer)
    if args.json:
        print(json.dumps(job, indent=2))
    elif not args.wait:
        print(_job_line(job))
    if args.wait and job_state(job) in TERMINAL_STATES and job_state(job) != JobState.succeeded:
        return 1
    return 0


def _jobs_list(args: argparse.Namespace) -> int:
    jobs = _client(args).jobs(state=args.state, all_users=args.all)
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    if not jobs:
        print("no jobs")
    for job in jobs:
        print(_job_line(job))
    return 0


def _jobs_logs(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.follow:
        for text in client.follow_logs(args.id):
            sys.stdout.write(text)
            sys.stdout.flush()
        return 0
    sys.stdout.write(client.logs(args.id)["data"])
    return 0


def _jobs_cancel(args: argparse.Namespace) -> int:
    answer = _client(args).cancel(args.id)
    job = answer.get("job", answer)
    print(f"{printable(job['id'])} {printable(job['state'])}")
    return 0


def add_jobs_commands(commands: argparse._SubParsersAction) -> None:
    jobs = commands.add_parser(
        "jobs",
        help="submit and follow batch jobs on the training GPUs",
        description="Batch jobs through the gpuslice service. Inside a server started by the hub, "
        "JUPYTERHUB_API_TOKEN and GPUSLICE_SERVICE_URL are already set.",
    )
    jobs.add_argument("--service-url", help="the service's URL (default: $GPUSLICE_SERVICE_URL)")
    job_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    submit = job_commands.add_parser("submit", help="run a Python script as a queued job")
    submit.add_argument("file", help="the script to run (from the working directory)")
    submit.add_argument("--gpus", type=int, default=1, help="whole GPUs on one node (default 1)")
    submit.add_argument("--priority", choices=PRIORITIES, default=Priority.normal.name)
    submit.add_argument("--time", help="time limit, e.g. 30m, 12h, or seconds")
    submit.add_argument("--name", help="a name for the job (default: the file name)")
    submit.add_argument("--wait", action="store_true", help="stream the logs and wait for the end")
    submit.add_argument("--json", action="store_true", help="print the job as JSON (with its id)")
    submit.set_defaults(handler=_jobs_submit)
    listing = job_commands.add_parser("list", help="your jobs, newest first")
    listing.add_argument("--state", help="only jobs in this state (queued, running, succeeded, ...)")
    listing.add_argument("--all", action="store_true", help="every user's jobs (admins)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_jobs_list)
    logs = job_commands.add_parser("logs", help="a job's output")
    logs.add_argument("id")
    logs.add_argument("-f", "--follow", action="store_true", help="keep streaming until the job ends")
    logs.set_defaults(handler=_jobs_logs)
    cancel = job_commands.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("id")
    cancel.set_defaults(handler=_jobs_cancel)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpuslice", description="jupyterhub-gpuslice command line")
    commands = parser.add_subparsers(dest="command", required=True)

    sim = commands.add_parser("sim", help="replay traces against the placement policies")
    sim_commands = sim.add_subparsers(dest="sim_command", required=True)
    place = sim_commands.add_parser(
        "place",
        help="replay an openb pod list (FGD paper method) and compare placement policies",
        description="The FGD artifact's method: the trace is shuffled, tasks drawn from it are appended "
        "until they ask for 130%% of the cluster's GPUs, tasks arrive one by one, never leave, and are "
        "dropped when they fit nowhere. Allocation at 100%% and 130%% arrived is shown beside the "
        "artifact's published 10-seed means (../shared/data/fgd-published) where the trace has them.",
    )
    place.add_argument("--nodes", help="node list CSV (default: the shared openb GPU node list)")
    place.add_argument("--pods", help="pod list CSV (default: the shared openb default trace)")
    place.add_argument(
        "--policy",
        type=_policy_list,
        default=list(POLICIES),
        help=f"comma-separated policies (default: all: {','.join(POLICIES)})",
    )
    place.add_argument(
        "--seeds",
        type=_positive,
        default=10,
        help="arrival orders to average over, seeds 42.. (default 10, as the published means)",
    )
    place.add_argument(
        "--workers",
        type=_positive,
        default=None,
        help="processes to run replays in (default: one per CPU core)",
    )
    place.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    place.set_defaults(handler=_sim_place)
    from spawner.sim.week_cli import add_week_command

    add_week_command(sim_commands)

    add_profiles_commands(commands)
    add_jobs_commands(commands)
    from spawner.kube_cli import add_kube_commands

    add_kube_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from spawner.client import ServiceError

    try:
        return args.handler(args)
    except UnknownPolicyError as error:
        parser.error(str(error))
    except ServiceError as error:
        # The service's own sentence (quota, bad request, not found), never a traceback.
        print(f"gpuslice {args.command}: {printable(error)}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
