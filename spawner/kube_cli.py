"""``gpuslice k8s render`` and ``gpuslice k8s render-job``: the manifests gpuslice would create, as YAML.

For admins to review before pointing a hub at a cluster: the notebook pod of one profile for one
user (with the slice back-end its pool is configured for, or another one with ``--backend``), and
the Job of one batch run. Nothing is sent to a cluster; the functions that build the manifests are
the ones the spawner and the Job executor call (:mod:`spawner.enforce.kube_objects`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from spawner.config.kube_backends import BACKEND_CAVEATS, BACKENDS
from spawner.core.vocabulary import TRAIN_POOL

EXAMPLE_NODE = "gpu-node-1"
EXAMPLE_UUID = "GPU-00000000-0000-0000-0000-000000000000"
DEFAULT_JOB_IMAGE = "ghcr.io/jupyterhub-gpuslice/trainer:0.1.0"
RUNNER_COMMAND = ("python", "-m", "spawner.service.runner")
JOB_FILES_ROOT = "/srv/gpuslice/jobs"
"""Where the Job executor's default settings mount the service's job files (see deploy/)."""


def _load_profiles(args: argparse.Namespace, command: str):
    """The profiles directory named (else ./profiles, else the shipped examples), or None after
    printing every problem in it, as ``gpuslice profiles check`` does."""
    from pathlib import Path

    from spawner.config.profiles import ProfileConfigError, load_profiles

    shipped = Path(__file__).resolve().parents[1] / "profiles"
    directory = Path(args.directory) if args.directory else Path("profiles")
    if not args.directory and not directory.is_dir():
        directory = shipped
    try:
        return load_profiles(directory)
    except ProfileConfigError as error:
        for line in error.errors:
            print(line, file=sys.stderr)
        print(f"gpuslice k8s {command}: fix the profiles in {directory} first", file=sys.stderr)
        return None


def _print_yaml(manifest: dict[str, Any], comments: list[str]) -> None:
    for line in comments:
        print(f"# {line}")
    print(yaml.safe_dump(manifest, sort_keys=False), end="")


def _render(args: argparse.Namespace) -> int:
    from spawner.enforce.kube_objects import SliceNotRepresentable, make_notebook_pod

    profile_set = _load_profiles(args, "render")
    if profile_set is None:
        return 1
    profile = profile_set.by_slug.get(args.profile)
    if profile is None:
        choices = ", ".join(profile_set.by_slug)
        print(f"gpuslice k8s render: no profile {args.profile!r}; choose one of: {choices}", file=sys.stderr)
        return 2
    pool = profile_set.kubernetes.for_pool(profile.pool)
    if args.backend:
        pool = pool.with_backend(args.backend)
    comments = [f"profile {profile.slug} ({profile.source}), pool {profile.pool}, back-end {pool.backend}"]
    try:
        profile, left_out = _with_options(profile, args.option)
    except ValueError as error:
        print(f"gpuslice k8s render: {error}", file=sys.stderr)
        return 2
    if left_out:
        comments.append(f"also set by the profile's options, not shown here: {', '.join(left_out)}")
    lease = None
    if profile.has_gpu:
        memory = profile.gpu_memory_mib
        lease = {
            "node": args.node,
            "shares": [
                {"gpu_uuid": f"{EXAMPLE_UUID[:-1]}{index}", "milli_gpu": profile.milli_gpu or 1000}
                | ({"memory_mib": memory} if memory else {})
                for index in range(max(profile.gpus, 1))
            ],
        }
        if pool.backend == "pinned":
            comments.append("node and GPU UUIDs are examples: the allocator chooses them at start")
        if pool.backend in BACKEND_CAVEATS:
            comments.append(BACKEND_CAVEATS[pool.backend])
    try:
        manifest = make_notebook_pod(
            profile, pool, user=args.user, server=args.server, lease=lease, namespace=args.namespace
        )
    except SliceNotRepresentable as error:
        print(f"gpuslice k8s render: {error}", file=sys.stderr)
        return 1
    _print_yaml(manifest, comments)
    return 0


def _with_options(profile, written: list[str]):
    """The profile with the image and environment its ``profile_options`` choose (``--option
    NAME=CHOICE``, else each option's default, as the spawner picks them), and the names of the
    other settings the choices override, which only KubeSpawner's own pod applies."""
    import dataclasses

    from spawner.config.profile_options import OptionRefused, profile_option_overrides

    chosen = {}
    for item in written:
        name, equals, choice = item.partition("=")
        if not equals or not name:
            raise ValueError(f"--option takes NAME=CHOICE (or NAME--unlisted-choice=VALUE), got {item!r}")
        chosen[name] = choice
    unknown = sorted(
        {name.removesuffix("--unlisted-choice") for name in chosen} - {o.name for o in profile.options}
    )
    if unknown:
        offered = ", ".join(option.name for option in profile.options) or "none"
        raise ValueError(f"profile {profile.slug} has no option {unknown[0]!r}; its options: {offered}")
    try:
        overrides = profile_option_overrides(profile.options, chosen)
    except OptionRefused as error:
        raise ValueError(str(error)) from None
    image = overrides.pop("image", None) or profile.image
    environment = {**profile.environment, **overrides.pop("environment", {})}
    return dataclasses.replace(profile, image=image, environment=environment), sorted(overrides)


def _render_job(args: argparse.Namespace) -> int:
    from spawner.enforce.kube_objects import HomeVolume, JobSpec, make_job

    profile_set = _load_profiles(args, "render-job")
    if profile_set is None:
        return 1
    pool = profile_set.kubernetes.for_pool(TRAIN_POOL)
    spec = JobSpec(
        job_id=args.job_id,
        owner=args.user,
        argv=args.command or [*RUNNER_COMMAND, f"{JOB_FILES_ROOT}/{args.job_id}/cell.json"],
        workdir=args.workdir,
        environment={"GPUSLICE_JOB_ID": args.job_id},
        gpus=args.gpus,
        time_limit_s=args.time_limit,
        image=args.image,
        namespace=args.namespace,
        grace_seconds=args.grace,
        local_queue=args.local_queue,
    )
    home = None if args.no_home else HomeVolume()
    _print_yaml(make_job(spec, pool, home), [f"batch job {args.job_id} of {args.user} on pool {TRAIN_POOL}"])
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def add_kube_commands(commands: argparse._SubParsersAction) -> None:
    """``gpuslice k8s render`` and ``gpuslice k8s render-job``."""
    kube = commands.add_parser("k8s", help="print the Kubernetes manifests gpuslice would create")
    kube_commands = kube.add_subparsers(dest="k8s_command", required=True)

    render = kube_commands.add_parser("render", help="the notebook pod of a profile for a user")
    render.add_argument("--profile", required=True, help="the profile's slug")
    render.add_argument("--user", required=True, help="the JupyterHub user name")
    render.add_argument("--server", default="", help="a named server (default: the user's default server)")
    render.add_argument("--backend", choices=BACKENDS, help="another slice back-end than the pool's")
    render.add_argument("--node", default=EXAMPLE_NODE, help="the node a pinned slice is shown on")
    render.add_argument("--namespace", default="default")
    render.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=CHOICE",
        help="a choice of one of the profile's profile_options (NAME--unlisted-choice=VALUE for a value "
        "of one's own); options not given take their default",
    )
    render.add_argument("directory", nargs="?", help="profiles directory (default: ./profiles)")
    render.set_defaults(handler=_render)

    job = kube_commands.add_parser("render-job", help="the Job of a batch run")
    job.add_argument("--user", required=True, help="the job's owner")
    job.add_argument("--gpus", type=_positive_int, default=1, help="whole GPUs on one node (default 1)")
    job.add_argument("--time-limit", type=float, default=3600.0, help="seconds (default 3600)")
    job.add_argument("--job-id", default="job-example", help="the job's id (default job-example)")
    job.add_argument("--image", default=DEFAULT_JOB_IMAGE, help="the trainer image")
    job.add_argument("--workdir", default="/home/jovyan", help="working directory (default /home/jovyan)")
    job.add_argument("--grace", type=float, default=30.0, help="seconds between SIGTERM and SIGKILL")
    job.add_argument("--local-queue", help="Kueue mode: the LocalQueue that admits the Job")
    job.add_argument("--no-home", action="store_true", help="do not mount the owner's home volume")
    job.add_argument("--namespace", default="default")
    job.add_argument("--command", nargs=argparse.REMAINDER, help="the command (default: the cell runner)")
    job.add_argument("--directory", help="profiles directory (default: ./profiles)")
    job.set_defaults(handler=_render_job)
