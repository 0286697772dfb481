"""Hubs for the scheduling tests: quotas with batch guarantees, fast passes, and job scripts that
checkpoint when they are preempted.

Each test module starts its own hub (``start_sched_hub``) with the quotas and GPUs it needs: the
scheduler's order is only observable when the test owns every GPU and every job.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from .jobhub import get_job, hold_the_dev_gpu
from .servicehub import HERE, ServiceHub, quotas_yaml

FAST_SCHEDULER_ARGS = [
    "--LeaseReconciler.grace_seconds=3600",
    "--BatchScheduler.interval_seconds=0.5",
    "--JobService.high_priority_groups=['researchers']",
    "--JobService.cancel_grace_seconds=2",
    "--JobService.log_follow_seconds=3",
]

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

CHECKPOINTS = """\
import pathlib, signal, sys, time
checkpoint = pathlib.Path({checkpoint!r})
hold = {hold!r}
if checkpoint.exists():
    print("resumed from", checkpoint.read_text(), flush=True)
    sys.exit(0)

def save_and_leave(signum, frame):
    print("checkpoint", flush=True)
    if hold:  # the test decides when the checkpoint is written
        for _ in range(1200):
            if pathlib.Path(hold).exists():
                break
            time.sleep(0.1)
    checkpoint.write_text("step 42")
    print("checkpoint saved", flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, save_and_leave)
print("training", flush=True)
for _ in range(6000):
    time.sleep(0.1)
"""
"""A training job: on SIGTERM it logs "checkpoint", saves one (once ``hold`` exists, if given) and
exits; run again, it finds the checkpoint, logs "resumed from step 42" and succeeds."""

SLEEPS = """\
import time
print("started", flush=True)
time.sleep(600)
"""


class SchedHub(ServiceHub):
    """A test hub whose service has the given quotas, arguments and (optionally) static GPUs."""

    def __init__(self, state_dir: Path, quotas: str, service_args: list[str], gpus_yaml: str | None = None):
        super().__init__(state_dir)
        (state_dir / "profiles" / "quotas.yaml").write_text(quotas)
        self.env["GPUSLICE_TEST_SERVICE_ARGS"] = " ".join(FAST_SCHEDULER_ARGS + service_args)
        if gpus_yaml is not None:
            gpus_file = state_dir / "gpus.yaml"
            gpus_file.write_text(gpus_yaml)
            self.env["GPUSLICE_TEST_GPUS_FILE"] = str(gpus_file)
            self.config_file = HERE / "static_hub_config.py"


def start_sched_hub(
    state_dir: Path,
    quotas: str,
    service_args: list[str],
    gpus_yaml: str | None = None,
    hold_dev_gpu: bool = False,
) -> SchedHub:
    hub = SchedHub(state_dir, quotas, service_args, gpus_yaml)
    try:
        hub.start()
        if hold_dev_gpu:
            hold_the_dev_gpu(hub)
    except Exception:
        hub.stop()
        raise
    return hub


def wait_until(hub: ServiceHub, what: str, check, timeout: float = 60):
    """``check()``'s first truthy value; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"never saw {what} within {timeout:g} s\n{hub.log()}")


def waiting_reason(session: requests.Session, hub: ServiceHub, job_id: str, text: str) -> dict:
    """The job once it waits in the queue with ``text`` in its waiting reason."""

    def check():
        job = get_job(session, hub, job_id)["job"]
        return job if job["state"] == "queued" and text in (job["waiting_reason"] or "") else None

    return wait_until(hub, f"job {job_id} waiting with {text!r}", check)


def follow_log(session: requests.Session, hub: ServiceHub, job_id: str, offset: int = 0) -> tuple[str, int]:
    """The whole log from ``offset``, read the way a client follows it (chunk after chunk)."""
    text = ""
    while True:
        answer = session.get(hub.api + f"jobs/{job_id}/logs?offset={offset}", timeout=30).json()
        text += answer["data"]
        if answer["next_offset"] == offset:
            return text, offset
        assert answer["next_offset"] == offset + len(answer["data"].encode()), answer
        offset = answer["next_offset"]


def events(session: requests.Session, hub: ServiceHub, job_id: str) -> list[str]:
    return [event["to_state"] for event in get_job(session, hub, job_id)["events"]]


def cancel(session: requests.Session, hub: ServiceHub, job_id: str) -> None:
    response = session.post(hub.api + f"jobs/{job_id}/cancel", timeout=60)
    assert response.status_code in (200, 409), response.text


def wait_for_log(
    session: requests.Session, hub: ServiceHub, job_id: str, text: str, timeout: float = 60
) -> str:
    """The job's whole log once ``text`` is in it, however small the log chunks are."""

    def check():
        log, _ = follow_log(session, hub, job_id)
        return log if text in log else None

    return wait_until(hub, f"{text!r} in the log of job {job_id}", check, timeout)
