"""Batch jobs through the REST API, run by the real service under a real hub."""

from __future__ import annotations

import os
import signal
import time

import pytest
from harness.jobs import FINAL, get_job, submit, train_gpu, wait_for, wait_for_log, wait_until
from harness.service_hubs import start_job_hub

pytestmark = pytest.mark.slow

PRINTS = """\
import os
for number in range(3):
    print(f"line {number}")
print("gpus", os.environ["CUDA_VISIBLE_DEVICES"])
"""

SLEEPS = """\
import time
print("started", flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = start_job_hub(tmp_path_factory.mktemp("jobs-hub"))
    yield hub
    hub.stop()


def assert_json_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    error = response.json()
    assert error["status"] == status
    return error["message"]


def test_a_script_job_runs_on_the_training_gpu_and_its_log_reads_by_offsets(hub):
    alice = hub.as_user("alice")
    job = submit(alice, hub, PRINTS, name="prints")
    assert (job["owner"], job["group"], job["state"], job["priority"]) == (
        "alice",
        "researchers",
        "queued",
        "normal",
    )
    assert job["time_limit_s"] == 600
    done = wait_for(alice, hub, job["id"], FINAL)
    gpu = train_gpu(hub)
    assert (done["state"], done["exit_code"]) == ("succeeded", 0), done
    assert (done["node"], done["gpu_uuids"], done["pool"]) == ("sim-node", [gpu["uuid"]], "train")
    assert gpu["milli_free"] == 1000  # its lease was given back

    whole = alice.get(hub.api + f"jobs/{job['id']}/logs", timeout=30).json()
    lines = [line for line in whole["data"].splitlines() if not line.startswith("[gpuslice]")]
    assert lines == ["line 0", "line 1", "line 2", f"gpus {gpu['uuid']}"]
    assert whole["done"] is True and whole["next_offset"] == len(whole["data"].encode())
    start = whole["data"].index("line 1")
    rest = alice.get(hub.api + f"jobs/{job['id']}/logs?offset={start}", timeout=30).json()
    assert rest["data"] == whole["data"][start:]
    assert rest["next_offset"] == whole["next_offset"]
    end = alice.get(hub.api + f"jobs/{job['id']}/logs?offset={whole['next_offset']}&follow=1", timeout=30)
    assert end.json() == {"data": "", "next_offset": whole["next_offset"], "done": True, "state": "succeeded"}

    detail = get_job(alice, hub, job["id"])
    assert [event["to_state"] for event in detail["events"]] == ["queued", "running", "succeeded"]
    lease = hub.client(hub.service_token).get(hub.api + f"leases/{done['lease_id']}", timeout=30).json()
    assert lease["lease"]["workload"] == "batch" and lease["lease"]["released_at"] is not None
    result = alice.get(hub.api + f"jobs/{job['id']}/result", timeout=30).json()
    assert (result["state"], result["exit_code"], result["done"]) == ("succeeded", 0, True)


def test_a_failing_script_fails_with_its_exit_code(hub):
    alice = hub.as_user("alice")
    job = submit(alice, hub, "import sys\nprint('about to fail')\nsys.exit(3)\n", gpus=0)
    done = wait_for(alice, hub, job["id"], FINAL)
    assert (done["state"], done["exit_code"]) == ("failed", 3)
    assert "exited with code 3" in done["reason"]
    result = alice.get(hub.api + f"jobs/{job['id']}/result", timeout=30).json()
    assert (result["state"], result["exit_code"]) == ("failed", 3)
    assert "about to fail" in alice.get(hub.api + f"jobs/{job['id']}/logs", timeout=30).json()["data"]


def test_a_job_past_its_time_limit_fails_saying_so(hub):
    alice = hub.as_user("alice")
    job = submit(alice, hub, SLEEPS, gpus=0, time_limit=2)
    done = wait_for(alice, hub, job["id"], FINAL, timeout=60)
    assert done["state"] == "failed"
    assert "time limit reached" in done["reason"]


def test_cancelling_a_running_job_stops_it_and_releases_its_lease(hub):
    alice = hub.as_user("alice")
    job = submit(alice, hub, SLEEPS)
    running = wait_for(alice, hub, job["id"], ("running",))
    wait_for_log(alice, hub, job["id"], "started")
    assert train_gpu(hub)["milli_free"] == 0
    cancelled = alice.post(hub.api + f"jobs/{job['id']}/cancel", timeout=60)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["job"]["state"] == "cancelled"
    assert cancelled.json()["job"]["reason"] == "cancelled by alice"
    # The cancel answers at once; the GPU comes back once the process is gone (SIGTERM here).
    wait_until(hub, "the training GPU free again", lambda: train_gpu(hub)["milli_free"] == 1000)
    lease = hub.client(hub.service_token).get(hub.api + f"leases/{running['lease_id']}", timeout=30).json()
    assert lease["lease"]["released_at"] is not None
    again = alice.delete(hub.api + f"jobs/{job['id']}", timeout=30)
    assert again.status_code == 200 and again.json()["job"]["state"] == "cancelled"
    log = alice.get(hub.api + f"jobs/{job['id']}/logs", timeout=30).json()
    assert log["done"] is True and "started" in log["data"]


def test_users_see_and_touch_only_their_own_jobs_and_admins_see_all(hub):
    alice, bob = hub.as_user("alice"), hub.as_user("bob")
    job = submit(alice, hub, "print('mine')\n", gpus=0)
    # Another user's job is as unknown to bob as no job at all: the answer names nobody.
    for method, path in [
        ("get", f"jobs/{job['id']}"),
        ("get", f"jobs/{job['id']}/logs"),
        ("get", f"jobs/{job['id']}/result"),
        ("post", f"jobs/{job['id']}/cancel"),
        ("delete", f"jobs/{job['id']}"),
    ]:
        message = assert_json_error(getattr(bob, method)(hub.api + path, timeout=30), 404)
        assert message == f"no job {job['id']!r}; list yours with GET jobs"
    for method, path in [("get", "jobs?user=alice"), ("get", "jobs?all=1")]:
        message = assert_json_error(getattr(bob, method)(hub.api + path, timeout=30), 403)
        assert "user bob" in message
    assert job["id"] not in [other["id"] for other in bob.get(hub.api + "jobs", timeout=30).json()["jobs"]]
    assert job["id"] in [mine["id"] for mine in alice.get(hub.api + "jobs", timeout=30).json()["jobs"]]
    for admin, query in [("erin", "all=1"), ("dana", "user=alice")]:
        listed = hub.as_user(admin).get(hub.api + f"jobs?{query}", timeout=30)
        assert job["id"] in [other["id"] for other in listed.json()["jobs"]], admin
    assert hub.as_user("erin").get(hub.api + f"jobs/{job['id']}", timeout=30).status_code == 200
    assert_json_error(bob.get(hub.api + "jobs/job-000000000000", timeout=30), 404)
    wait_for(alice, hub, job["id"], FINAL)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"gpu": 1}, "'gpu' was unexpected"),
        ({"gpus": -1}, "give 0 (CPU only) or more whole GPUs"),
        ({"gpus": 16}, "no node has 16 GPUs (a job's GPUs are all on one node): the largest training node"),
        ({"priority": "urgent"}, "give one of low, normal, high"),
        ({"time_limit": "soon"}, "write it like '12h'"),
        ({"script": "x = 1\n" * int(2.3 * 2**20 / 6)}, "script is 2.3 MiB; the limit is 1 MiB"),
    ],
)
def test_bad_submissions_get_a_400_saying_what_to_change(hub, fields, says):
    body = {"name": "bad", "script": "print(1)\n", "gpus": 1, **fields}
    message = assert_json_error(hub.as_user("alice").post(hub.api + "jobs", json=body, timeout=30), 400)
    assert says in message


def test_only_allowed_groups_and_admins_submit_high_priority(hub):
    body = {"name": "urgent", "script": "print(1)\n", "gpus": 0, "priority": "high"}
    message = assert_json_error(hub.as_user("bob").post(hub.api + "jobs", json=body, timeout=30), 400)
    assert "'high' is for members of researchers and admins" in message
    for user in ("alice", "dana"):  # in researchers; a hub admin
        job = submit(hub.as_user(user), hub, "print(1)\n", gpus=0, priority="high")
        assert job["priority"] == "high"
        wait_for(hub.as_user(user), hub, job["id"], FINAL)


def test_high_priority_jobs_start_before_normal_ones_on_the_one_training_gpu(hub):
    alice = hub.as_user("alice")
    blocker = submit(alice, hub, SLEEPS, name="blocker")
    wait_for(alice, hub, blocker["id"], ("running",))
    normal = submit(alice, hub, "print('normal')\n", name="normal")
    high = submit(alice, hub, "print('high')\n", name="high", priority="high")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        waiting = get_job(alice, hub, normal["id"])["job"]
        if waiting["waiting_reason"] and "higher priority" in waiting["waiting_reason"]:
            break
        time.sleep(0.2)
    assert waiting["waiting_reason"] == "waiting for 1 GPU on one node; 1 job of higher priority ahead"
    assert waiting["queue_position"] == 1
    assert get_job(alice, hub, high["id"])["job"]["queue_position"] == 0
    assert alice.post(hub.api + f"jobs/{blocker['id']}/cancel", timeout=60).status_code == 200
    high_done = wait_for(alice, hub, high["id"], FINAL)
    normal_done = wait_for(alice, hub, normal["id"], FINAL)
    assert high_done["state"] == normal_done["state"] == "succeeded"
    assert high_done["ended_at"] <= normal_done["started_at"]


def test_cancelling_a_queued_job_takes_it_out_of_the_queue(hub):
    alice = hub.as_user("alice")
    blocker = submit(alice, hub, SLEEPS, name="blocker")
    wait_for(alice, hub, blocker["id"], ("running",))
    queued = submit(alice, hub, "print('never')\n")
    response = alice.delete(hub.api + f"jobs/{queued['id']}", timeout=30)
    assert response.status_code == 200 and response.json()["job"]["state"] == "cancelled"
    assert alice.post(hub.api + f"jobs/{blocker['id']}/cancel", timeout=60).status_code == 200
    finished = alice.post(hub.api + f"jobs/{queued['id']}/cancel", timeout=30).json()["job"]
    assert finished["started_at"] is None and finished["state"] == "cancelled"
    assert alice.get(hub.api + f"jobs/{queued['id']}/logs", timeout=30).json()["data"] == ""


def test_listings_are_newest_first_within_a_limit_and_leave_the_provenance_to_the_job(hub):
    bob = hub.as_user("bob")
    first = submit(bob, hub, "print('one')\n", name="first", provenance={"cell": "one"})
    second = submit(bob, hub, "print('two')\n", name="second", provenance={"cell": "two"})
    listed = bob.get(hub.api + "jobs", params={"limit": 1}, timeout=30).json()["jobs"]
    assert [job["id"] for job in listed] == [second["id"]]
    assert "provenance" not in listed[0] and "payload" not in listed[0]
    assert get_job(bob, hub, first["id"])["job"]["provenance"] == {"cell": "one"}
    for limit in ("0", "-3", "many", "10001"):
        response = bob.get(hub.api + "jobs", params={"limit": limit}, timeout=30)
        assert response.status_code == 400, response.text
        assert response.json()["message"].startswith("limit: give a whole number of jobs from 1 to 10000")
    for job in (first, second):
        bob.post(hub.api + f"jobs/{job['id']}/cancel", timeout=60)


WRITES_ITS_PID = """\
import os, pathlib, time
pathlib.Path({pid_file!r}).write_text(str(os.getpid()))
print("started", flush=True)
time.sleep(600)
"""


def test_a_cancel_reaches_the_job_even_if_the_service_dies_right_after_answering(hub, tmp_path):
    alice = hub.as_user("alice")
    pid_file = tmp_path / "job.pid"
    job = submit(alice, hub, WRITES_ITS_PID.format(pid_file=str(pid_file)))
    wait_for(alice, hub, job["id"], ("running",))
    wait_for_log(alice, hub, job["id"], "started")
    job_pid = int(pid_file.read_text())
    service_pid = hub.service_pid()

    cancelled = alice.post(hub.api + f"jobs/{job['id']}/cancel", timeout=60)
    assert cancelled.status_code == 200 and cancelled.json()["job"]["state"] == "cancelled"
    os.kill(service_pid, signal.SIGKILL)  # nothing of the service is left to finish the stop

    def job_gone() -> bool:
        try:
            os.kill(job_pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(hub, "the cancelled job's process gone", job_gone, timeout=30)
    hub.wait_for_service_restart(service_pid)
    # The restarted service finds the cancelled job's lease and gives it back.
    lease_id = get_job(alice, hub, job["id"])["job"]["lease_id"]
    service = hub.client(hub.service_token)
    wait_until(
        hub,
        "the cancelled job's lease released",
        lambda: service.get(hub.api + f"leases/{lease_id}", timeout=30).json()["lease"]["released_at"],
        timeout=60,
    )
