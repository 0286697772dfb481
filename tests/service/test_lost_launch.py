"""A job whose start a killed service cut short goes back to the queue, and then runs.

A kill lands between two steps of a start; these tests make, deterministically, what each such
kill leaves (see ``spawner/service/launches.py``): the run's lease granted and nothing else, or
also its run directory with its spec but no process. The in-process tests drive the real ledger,
executor and scheduler; the last one kills a real hub's service for real, with its hub frozen so
that nothing restarts the service while the test lays down what the kill left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness.jobs import FINAL, get_job, submit, train_gpu, wait_for
from harness.service_hubs import start_job_hub

from spawner.config.profiles import ProfileSet
from spawner.core.quota import QuotaPolicy
from spawner.core.units import GPU, Node, SliceRequest, WorkloadClass
from spawner.ledger import Ledger
from spawner.ledger.jobs import JobSpec, JobStore
from spawner.service.allocator import Allocator
from spawner.service.executor import ExecutionSpec, LocalExecutor, jobdir
from spawner.service.jobs import JobService, run_id
from spawner.service.launches import CUT_SHORT
from spawner.service.scheduling import LOST_IN_RESTART, BatchScheduler

TRAIN = GPU("gpu-train-0", "node-a", 0, "A100", 81920, pools=frozenset({"train"}))
SCRIPT = "print('the job ran', flush=True)\n"


class Service:
    """The parts of one service over a state directory; a new one is a restarted service."""

    def __init__(self, state: Path):
        self.ledger = Ledger(f"sqlite:///{state / 'ledger.sqlite'}")
        self.ledger.create_schema()
        self.ledger.sync_inventory([Node("node-a", 16000, 65536, gpus=(TRAIN,))])
        self.store = JobStore(self.ledger)
        self.executor = LocalExecutor(jobs_dir=str(state / "jobs"), grace_seconds=1.0)
        self.allocator = Allocator(self.ledger, ProfileSet(()), None, "default")
        self.jobs = JobService(
            self.store,
            self.allocator,
            self.executor,
            scripts_dir=str(state / "job-scripts"),
            signing_key_dir=str(state),
        )
        self.scheduler = BatchScheduler(self.jobs, self.allocator, self.executor, interval_seconds=0)

    async def run_until_ended(self, job_id: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await self.scheduler.pass_and_publish()
            if self.store.get(job_id).final:
                return
            await asyncio.sleep(0.1)
        pytest.fail(f"job {job_id} did not end: {self.store.get(job_id)}")

    def close(self) -> None:
        self.ledger.close()


@pytest.fixture
def state(tmp_path):
    return tmp_path


def queue_a_job(service: Service, name: str = "cut short") -> str:
    return service.store.submit(JobSpec("alice", None, name, SCRIPT, "", gpus=1)).id


def grant_its_next_run(service: Service, job_id: str) -> str:
    """What a pass writes first when it starts a job: the lease of its next run."""
    record = service.store.get(job_id)
    lease_id = run_id(record, record.attempts + 1)
    result = service.ledger.allocate(
        lease_id,
        job_id,
        record.owner,
        record.group,
        WorkloadClass.batch,
        SliceRequest(gpus=1, pool="train"),
        QuotaPolicy(),
    )
    assert result.granted, result
    return lease_id


def make_its_run_directory(service: Service, lease_id: str) -> Path:
    """What the executor writes next: the run's directory and spec, before any supervisor."""
    directory = service.executor.job_dir(lease_id)
    argv = [sys.executable, "-c", SCRIPT]
    spec = ExecutionSpec(lease_id, "alice", argv, str(directory.parent), {}, [], 60.0)
    service.executor.prepare_job_dir(directory, spec, None)
    return directory


def log_of(service: Service, job_id: str) -> str:
    record = service.store.get(job_id)
    return service.executor.log_path(run_id(record)).read_text()


def test_a_start_cut_short_after_its_run_directory_goes_back_to_the_queue_and_runs(state):
    before = Service(state)
    job_id = queue_a_job(before)
    untouched = queue_a_job(before, "never started")
    lease_id = grant_its_next_run(before, job_id)
    directory = make_its_run_directory(before, lease_id)
    before.close()  # killed here: no supervisor was spawned

    after = Service(state)
    asyncio.run(after.scheduler.recover())

    record = after.store.get(job_id)
    assert (record.state, record.attempts) == ("queued", 0), record
    events = after.store.events(job_id)
    assert [event.to_state for event in events] == ["queued", "queued"]
    assert events[-1].reason == CUT_SHORT
    assert after.ledger.record(lease_id) is None, "the grant of the run that never started is forgotten"
    assert not directory.exists()
    assert [path.name for path in directory.parent.glob(f"{lease_id}.cut-short-*")]
    assert len(after.store.events(untouched)) == 1, "a queued job that never started keeps its history"

    asyncio.run(after.run_until_ended(job_id))
    record = after.store.get(job_id)
    assert (record.state, record.exit_code, record.attempts, record.lease_id) == ("succeeded", 0, 1, lease_id)
    assert "the job ran" in log_of(after, job_id)
    assert LOST_IN_RESTART not in record.reason
    after.close()


def test_a_start_cut_short_after_its_grant_goes_back_to_the_queue_and_runs(state):
    before = Service(state)
    job_id = queue_a_job(before)
    lease_id = grant_its_next_run(before, job_id)
    before.close()  # killed here: nothing but the grant was written

    after = Service(state)
    asyncio.run(after.scheduler.recover())
    assert after.store.get(job_id).state == "queued"
    assert after.store.events(job_id)[-1].reason == CUT_SHORT
    assert after.ledger.record(lease_id) is None

    asyncio.run(after.run_until_ended(job_id))
    record = after.store.get(job_id)
    assert (record.state, record.lease_id) == ("succeeded", lease_id)
    assert "the job ran" in log_of(after, job_id)
    after.close()


def test_a_start_whose_grant_a_pass_released_since_still_starts(state):
    """Recovery missed it (it failed), and a pass released the lease of the queued job: the id is
    a released grant now, and the next start under it must not be refused for ever."""
    service = Service(state)
    job_id = queue_a_job(service)
    lease_id = grant_its_next_run(service, job_id)
    service.ledger.release(lease_id)

    asyncio.run(service.run_until_ended(job_id))
    record = service.store.get(job_id)
    assert (record.state, record.lease_id) == ("succeeded", lease_id)
    assert service.ledger.record(lease_id).live is False
    service.close()


def test_a_supervisor_spawned_but_not_yet_recorded_is_adopted_not_started_twice(state):
    before = Service(state)
    job_id = queue_a_job(before)
    lease_id = grant_its_next_run(before, job_id)
    directory = make_its_run_directory(before, lease_id)
    # Killed right after spawning the supervisor, before writing its pid: it names its directory.
    supervisor = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "--job-dir", str(directory)]
    )
    try:
        for _ in range(100):
            if jobdir.command_line_mentions(supervisor.pid, str(directory)):
                break
            time.sleep(0.05)
        before.close()

        after = Service(state)
        asyncio.run(after.scheduler.recover())
        record = after.store.get(job_id)
        assert (record.state, record.lease_id) == ("running", lease_id)
        assert jobdir.read_json(directory / jobdir.SUPERVISOR_PID)["pid"] == supervisor.pid
        assert after.ledger.record(lease_id).live
        after.close()
    finally:
        supervisor.kill()
        supervisor.wait()


# --------------------------------------------------------------------- a real service killed


def wait_until_dead(pid: int, timeout: float = 10) -> None:
    """Until ``pid`` has exited (a zombie counts: its parent, the frozen hub, cannot reap it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    pytest.fail(f"process {pid} did not exit")


@pytest.fixture
def hub(tmp_path_factory):
    hub = start_job_hub(tmp_path_factory.mktemp("lost-launch-hub"))
    yield hub
    with contextlib.suppress(ProcessLookupError):
        os.kill(hub.process.pid, signal.SIGCONT)
    hub.stop()


@pytest.mark.slow
def test_a_real_service_killed_while_starting_a_job_runs_it_after_the_restart(hub):
    service = hub.client(hub.service_token)
    alice = hub.as_user("alice")
    # The training GPU is taken, so the job waits in the queue until the test starts it.
    holder = {"lease_id": "train-holder", "user": "carol", "holder": "carol/"}
    holder["request"] = {"gpus": 1, "pool": "train"}
    assert service.post(hub.api + "leases", json=holder, timeout=30).status_code == 201
    job = submit(alice, hub, SCRIPT, name="started when the service was killed")
    assert get_job(alice, hub, job["id"])["job"]["state"] == "queued"
    gpu = train_gpu(hub)["uuid"]

    # Freeze the hub, so that nothing restarts the service while the test writes what the kill
    # left; then kill the service (its locks on the ledger go with it).
    os.kill(hub.process.pid, signal.SIGSTOP)
    old_pid = hub.service_pid()
    os.kill(old_pid, signal.SIGKILL)
    wait_until_dead(old_pid)

    # What the killed service had done of the start: the holder gone, the job's lease granted on
    # the training GPU, its run directory and spec written; no supervisor spawned yet.
    with contextlib.closing(Ledger(f"sqlite:///{hub.state_dir / 'gpuslice.sqlite'}")) as ledger:
        ledger.release("train-holder")
        record = JobStore(ledger).get(job["id"])
        lease_id = run_id(record, 1)
        request = SliceRequest(gpus=1, pool="train")
        granted = ledger.allocate(lease_id, record.id, "alice", record.group, "batch", request, QuotaPolicy())
        assert granted.granted and granted.lease.placement.gpu_uuids == (gpu,)
    executor = LocalExecutor(jobs_dir=str(hub.state_dir / "jobs"))
    spec = ExecutionSpec(lease_id, "alice", [sys.executable, "-c", SCRIPT], str(hub.state_dir), {}, [], 600.0)
    executor.prepare_job_dir(executor.job_dir(lease_id), spec, None)

    os.kill(hub.process.pid, signal.SIGCONT)
    hub.wait_for_service_restart(old_pid)

    done = wait_for(alice, hub, job["id"], FINAL, timeout=60)
    assert (done["state"], done["exit_code"]) == ("succeeded", 0), done
    assert done["lease_id"] == lease_id and done["attempts"] == 1
    log = alice.get(hub.api + f"jobs/{job['id']}/logs", timeout=30).json()["data"]
    assert "the job ran" in log
    events = get_job(alice, hub, job["id"])["events"]
    assert [event["to_state"] for event in events] == ["queued", "queued", "running", "succeeded"]
    assert events[1]["reason"] == CUT_SHORT
