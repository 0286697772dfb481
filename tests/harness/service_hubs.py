"""The hubs of the service tests: hub_config.py with test users, test quotas and simulated GPUs.

All are :class:`harness.hub.HubProcess`, so they have the shipped roles, scopes and service; what
differs is set as an admin would set it (``GPUSLICE_*``), plus what only tests need:

- five users who log in with any password: alice (group researchers), bob (students), carol
  (a large quota: she holds the dev GPU in job tests), dana (a hub admin), erin (holds the
  service's admin scope, ``custom:gpuslice:admin``);
- a ``test-admin`` service whose token makes user tokens (:meth:`HubProcess.token_for`);
- two simulated GPUs on node ``sim-node``, both sliced for notebooks unless a test names its
  training GPUs, or a static inventory (several nodes: gangs, backfill);
- service arguments: leases of servers that never run are kept (only the reconciliation tests let
  the reconciler release them), and job hubs schedule every half second.
"""

from __future__ import annotations

import secrets
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from .hub import REPO_ROOT, HubProcess

TEST_USERS = ("alice", "bob", "carol", "dana", "erin")
TEST_GROUPS = "researchers=alice;students=bob"
HUB_ADMINS = "dana"
SERVICE_ADMIN_ROLE = {"name": "gpuslice-admin", "scopes": ["custom:gpuslice:admin"], "users": ["erin"]}
"""erin holds the service's admin scope (hub_config.py's custom scope) without being a hub admin."""

NODE_NAME = "sim-node"
SIMULATED_GPUS = 2
KEEP_LEASES = "--LeaseReconciler.grace_seconds=3600"
"""The API tests hold leases for servers that never run: the reconciler must not release them."""


def quotas_yaml(groups: str) -> str:
    """The test quotas with ``groups`` (YAML indented under ``groups:``): every user may hold one
    GPU's worth of slices, and carol (who holds the dev GPU in job tests) far more."""
    return (
        """\
quotas:
  default_user:
    interactive:
      servers: 2
      milli_gpu: 1000
  users:
    carol:
      interactive:
        servers: 50
        milli_gpu: 100000
  groups:
"""
        + groups
    )


TEST_QUOTAS = quotas_yaml(
    """\
    researchers:
      interactive:
        servers: 8
        milli_gpu: 4000
"""
)

BORROWING_QUOTAS = quotas_yaml(
    """\
    researchers:
      batch:
        borrow_gpus: 4
    students:
      batch:
        borrow_gpus: 4
"""
)
"""Researchers and students with no batch guarantee and 4 GPUs each to borrow: equal weights, so
only their decayed usage orders them."""

JOB_SERVICE_ARGS = [
    KEEP_LEASES,
    "--BatchScheduler.interval_seconds=0.5",
    "--JobService.high_priority_groups=['researchers']",
    "--JobService.cancel_grace_seconds=2",
    "--JobService.log_follow_seconds=3",
]
"""A fast batch scheduler, researchers first, and short grace periods."""


def service_hub(
    state_dir: Path,
    *,
    quotas: str = TEST_QUOTAS,
    service_args: Sequence[str] = (KEEP_LEASES,),
    gpus_yaml: str | None = None,
    train_gpus: str = "none",
) -> HubProcess:
    """A service test hub in ``state_dir`` (not started): the shipped profiles with ``quotas``, the
    service started with ``service_args``, on ``gpus_yaml`` (a static inventory) if given, else
    on two simulated GPUs; ``train_gpus`` is ``GPUSLICE_TRAIN_GPUS`` (``"none"``: all sliced for
    notebooks; ``"1"``: index 1 trains)."""
    profiles = state_dir / "profiles"
    profiles.mkdir()
    shutil.copy(REPO_ROOT / "profiles" / "default.yaml", profiles / "default.yaml")
    (profiles / "quotas.yaml").write_text(quotas)
    env = {
        "GPUSLICE_PROFILES_DIR": str(profiles),
        "GPUSLICE_GROUPS": TEST_GROUPS,
        "GPUSLICE_ADMIN_USERS": HUB_ADMINS,
        "GPUSLICE_TRAIN_GPUS": train_gpus,
    }
    args = list(service_args)
    if gpus_yaml is None:
        env.update(GPUSLICE_INVENTORY="simulated", GPUSLICE_SIMULATED_GPUS=str(SIMULATED_GPUS))
        args.insert(0, f"--Inventory.node_name={NODE_NAME}")
    else:
        gpus_file = state_dir / "gpus.yaml"
        gpus_file.write_text(gpus_yaml)
        env.update(GPUSLICE_INVENTORY="static", GPUSLICE_GPUS_FILE=str(gpus_file))
    return HubProcess(
        state_dir,
        env,
        service_args=args,
        users=TEST_USERS,
        roles=[SERVICE_ADMIN_ROLE],
        admin_token=secrets.token_hex(16),
    )


def started(hub: HubProcess, hold_dev_gpu: bool = False) -> HubProcess:
    """``hub`` started (and holding the dev GPU if asked); stopped again if that fails."""
    try:
        hub.start()
        if hold_dev_gpu:
            hold_the_dev_gpu(hub)
    except BaseException:
        hub.stop()
        raise
    return hub


def start_job_hub(state_dir: Path, extra_service_args: str = "") -> HubProcess:
    """A started hub for job tests: index 0 in the dev pool, index 1 in the train pool, and the dev
    GPU held whole by carol's interactive lease, so that batch jobs (which borrow idle dev GPUs
    beyond their group's guarantee) all queue for the one training GPU and their order is the
    scheduler's alone. ``extra_service_args``: more service arguments, space-separated."""
    hub = service_hub(state_dir, service_args=JOB_SERVICE_ARGS + extra_service_args.split(), train_gpus="1")
    return started(hub, hold_dev_gpu=True)


def start_queue_only_hub(state_dir: Path, extra_service_args: str = "") -> HubProcess:
    """A :func:`start_job_hub` whose training GPU is held too (by carol's lease ``train-holder``),
    so that every job submitted stays in the queue: for tests of what submission accepts."""
    hub = start_job_hub(state_dir, extra_service_args)
    body = {"lease_id": "train-holder", "user": "carol", "holder": "carol/"}
    body["request"] = {"gpus": 1, "pool": "train"}
    held = hub.client(hub.service_token).post(hub.api + "leases", json=body, timeout=30)
    if held.status_code != 201:
        hub.stop()
        raise AssertionError(f"the training GPU could not be held: {held.status_code} {held.text}")
    return hub


def start_sched_hub(
    state_dir: Path,
    quotas: str,
    service_args: list[str],
    gpus_yaml: str | None = None,
    hold_dev_gpu: bool = False,
) -> HubProcess:
    """A started hub for the scheduling tests, with the test module's own quotas, service arguments
    and (optionally) static GPUs: the scheduler's order is only observable when the test owns
    every GPU and every job."""
    args = JOB_SERVICE_ARGS + service_args
    hub = service_hub(state_dir, quotas=quotas, service_args=args, gpus_yaml=gpus_yaml)
    return started(hub, hold_dev_gpu)


def hold_the_dev_gpu(hub: HubProcess) -> None:
    """carol takes the whole dev GPU with an interactive lease, made with the service's token."""
    body = {
        "lease_id": f"dev-holder-{uuid.uuid4().hex}",
        "user": "carol",
        "holder": "carol/",
        "request": {"gpus": 1, "pool": "dev"},
    }
    response = hub.client(hub.service_token).post(hub.api + "leases", json=body, timeout=30)
    assert response.status_code == 201, response.text
