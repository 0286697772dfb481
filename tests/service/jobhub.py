"""A hub whose service has a training GPU and a fast batch scheduler, and helpers for job tests.

Two simulated GPUs on one node: index 0 in the dev pool, index 1 in the train pool. The dev GPU
is held whole by an interactive lease for the whole module, so that batch jobs (which borrow
idle dev GPUs when they run beyond their group's guarantee) all queue for the one training GPU
and their order is the scheduler's alone.
"""

from __future__ import annotations

import time
import uuid

import pytest
import requests

from .servicehub import ServiceHub

JOB_SERVICE_ARGS = " ".join(
    [
        "--LeaseReconciler.grace_seconds=3600",
        "--Inventory.train_gpu_indices=[1]",
        "--BatchScheduler.interval_seconds=0.5",
        "--JobService.high_priority_groups=['researchers']",
        "--JobService.cancel_grace_seconds=2",
        "--JobService.log_follow_seconds=3",
    ]
)

FINAL = ("succeeded", "failed", "cancelled")


def start_job_hub(state_dir, extra_service_args: str = "") -> ServiceHub:
    hub = ServiceHub(state_dir)
    hub.env["GPUSLICE_TEST_SERVICE_ARGS"] = f"{JOB_SERVICE_ARGS} {extra_service_args}".strip()
    try:
        hub.start()
        hold_the_dev_gpu(hub)
    except Exception:
        hub.stop()
        raise
    return hub


def hold_the_dev_gpu(hub: ServiceHub) -> None:
    body = {
        "lease_id": f"dev-holder-{uuid.uuid4().hex}",
        "user": "carol",
        "holder": "carol/",
        "request": {"gpus": 1, "pool": "dev"},
    }
    response = hub.client(hub.service_token).post(hub.api + "leases", json=body, timeout=30)
    assert response.status_code == 201, response.text


def submit(session: requests.Session, hub: ServiceHub, script: str, **fields) -> dict:
    body = {"name": "test job", "script": script, "gpus": 1, "time_limit": "10m", **fields}
    response = session.post(hub.api + "jobs", json=body, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["job"]


def get_job(session: requests.Session, hub: ServiceHub, job_id: str) -> dict:
    response = session.get(hub.api + f"jobs/{job_id}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(session, hub: ServiceHub, job_id: str, states, timeout: float = 30) -> dict:
    """The job once it is in one of ``states``; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get_job(session, hub, job_id)["job"]
        if job["state"] in states:
            return job
        time.sleep(0.2)
    pytest.fail(f"job {job_id} never reached {states}: {get_job(session, hub, job_id)}\n{hub.log()}")


def wait_for_log(session, hub: ServiceHub, job_id: str, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    log = ""
    while time.monotonic() < deadline:
        answer = session.get(hub.api + f"jobs/{job_id}/logs", timeout=30).json()
        log = answer["data"]
        if text in log:
            return log
        time.sleep(0.2)
    pytest.fail(f"job {job_id} never logged {text!r}; its log: {log!r}\n{hub.log()}")


def train_gpu(hub: ServiceHub) -> dict:
    gpus = hub.client(hub.service_token).get(hub.api + "gpus", timeout=30).json()["gpus"]
    (gpu,) = [gpu for gpu in gpus if "train" in gpu["pools"]]
    return gpu
