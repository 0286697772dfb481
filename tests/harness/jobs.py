"""The jobs API as tests call it: submit, read, wait for a state or a line of the log, cancel.

Each helper takes the session to call with (a user's, or the service's own) and the hub
(:class:`harness.hub.HubProcess`) whose service answers; failures end the test with the hub's log.
"""

from __future__ import annotations

import time

import pytest
import requests

from .hub import HubProcess

FINAL = ("succeeded", "failed", "cancelled")
"""The job states a job never leaves."""

SLEEPS = """\
import time
print("started", flush=True)
time.sleep(600)
"""
"""A job that logs "started" and holds its GPU until it is cancelled."""

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


def submit(session: requests.Session, hub: HubProcess, script: str, **fields) -> dict:
    body = {"name": "test job", "script": script, "gpus": 1, "time_limit": "10m", **fields}
    response = session.post(hub.api + "jobs", json=body, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["job"]


def get_job(session: requests.Session, hub: HubProcess, job_id: str) -> dict:
    response = session.get(hub.api + f"jobs/{job_id}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def events(session: requests.Session, hub: HubProcess, job_id: str) -> list[str]:
    """The states the job went through, in order."""
    return [event["to_state"] for event in get_job(session, hub, job_id)["events"]]


def cancel(session: requests.Session, hub: HubProcess, job_id: str) -> None:
    response = session.post(hub.api + f"jobs/{job_id}/cancel", timeout=60)
    assert response.status_code in (200, 409), response.text


def wait_until(hub: HubProcess, what: str, check, timeout: float = 60):
    """``check()``'s first truthy value; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"never saw {what} within {timeout:g} s\n{hub.log()}")


def wait_for(session: requests.Session, hub: HubProcess, job_id: str, states, timeout: float = 30) -> dict:
    """The job once it is in one of ``states``; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get_job(session, hub, job_id)["job"]
        if job["state"] in states:
            return job
        time.sleep(0.2)
    pytest.fail(f"job {job_id} never reached {states}: {get_job(session, hub, job_id)}\n{hub.log()}")


def waiting_reason(session: requests.Session, hub: HubProcess, job_id: str, text: str) -> dict:
    """The job once it waits in the queue with ``text`` in its waiting reason."""

    def check():
        job = get_job(session, hub, job_id)["job"]
        return job if job["state"] == "queued" and text in (job["waiting_reason"] or "") else None

    return wait_until(hub, f"job {job_id} waiting with {text!r}", check)


def follow_log(session: requests.Session, hub: HubProcess, job_id: str, offset: int = 0) -> tuple[str, int]:
    """The log from ``offset`` as far as it goes now, read the way a client follows it (chunk
    after chunk, each starting where the last ended), and the offset it ends at."""
    text = ""
    while True:
        answer = session.get(hub.api + f"jobs/{job_id}/logs?offset={offset}", timeout=30).json()
        text += answer["data"]
        if answer["next_offset"] == offset:
            return text, offset
        assert answer["next_offset"] == offset + len(answer["data"].encode()), answer
        offset = answer["next_offset"]


def wait_for_log(
    session: requests.Session, hub: HubProcess, job_id: str, text: str, timeout: float = 60
) -> str:
    """The job's whole log (every chunk, however small the service makes them) once ``text`` is in
    it; fails the test, showing the log so far, after ``timeout`` seconds. ``text=""`` returns the
    log as it is now."""
    deadline = time.monotonic() + timeout
    while True:
        log, _ = follow_log(session, hub, job_id)
        if text in log:
            return log
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    pytest.fail(f"job {job_id} never logged {text!r} within {timeout:g} s; its log: {log!r}\n{hub.log()}")


def train_gpu(hub: HubProcess) -> dict:
    """The hub's one GPU in the train pool, as the service lists it."""
    gpus = hub.client(hub.service_token).get(hub.api + "gpus", timeout=30).json()["gpus"]
    (gpu,) = [gpu for gpu in gpus if "train" in gpu["pools"]]
    return gpu
