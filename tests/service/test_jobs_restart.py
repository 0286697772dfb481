"""Jobs outlive the service: after it is killed and the hub restarts it, every job is where it was."""

from __future__ import annotations

import os
import signal
import time

import pytest
from harness.jobs import FINAL, get_job, submit, wait_for, wait_for_log
from harness.service_hubs import start_job_hub

pytestmark = pytest.mark.slow

WAITS_FOR_FLAG = """\
import pathlib, time
print("before the kill", flush=True)
flag = pathlib.Path({flag!r})
for _ in range(1800):
    if flag.exists():
        break
    time.sleep(0.1)
print("after the kill", flush=True)
"""


@pytest.fixture
def hub(tmp_path_factory):
    hub = start_job_hub(tmp_path_factory.mktemp("jobs-restart-hub"))
    yield hub
    hub.stop()


def test_running_and_queued_jobs_survive_a_killed_service(hub, tmp_path):
    alice = hub.as_user("alice")
    flag = tmp_path / "go-on"
    running = submit(alice, hub, WAITS_FOR_FLAG.format(flag=str(flag)), name="long")
    wait_for(alice, hub, running["id"], ("running",))
    wait_for_log(alice, hub, running["id"], "before the kill")
    queued = submit(alice, hub, "print('queued one ran')\n", name="queued")
    lease_id = get_job(alice, hub, running["id"])["job"]["lease_id"]

    old_pid = hub.service_pid()
    assert old_pid is not None, hub.log()
    os.kill(old_pid, signal.SIGKILL)
    hub.wait_for_service_restart(old_pid)

    time.sleep(1.5)  # a few scheduling passes of the new service
    after = get_job(alice, hub, running["id"])["job"]
    assert (after["state"], after["lease_id"]) == ("running", lease_id)
    assert get_job(alice, hub, queued["id"])["job"]["state"] == "queued"
    assert "before the kill" in alice.get(hub.api + f"jobs/{running['id']}/logs", timeout=30).json()["data"]

    flag.touch()
    done = wait_for(alice, hub, running["id"], FINAL)
    assert (done["state"], done["exit_code"]) == ("succeeded", 0)
    log = alice.get(hub.api + f"jobs/{running['id']}/logs", timeout=30).json()["data"]
    assert log.index("before the kill") < log.index("after the kill")
    assert wait_for(alice, hub, queued["id"], FINAL)["state"] == "succeeded"
    lease = hub.client(hub.service_token).get(hub.api + f"leases/{lease_id}", timeout=30).json()["lease"]
    assert lease["released_at"] is not None
