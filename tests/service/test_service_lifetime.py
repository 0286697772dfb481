"""The service lives as long as the hub that started it, and one runs per pid file.

A hub killed with SIGKILL used to leave its service running on the service port, and the restarted
hub's service failed with "Address already in use" until someone killed the orphan by hand. See
``spawner/service/lifetime.py`` for the rules tested here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from harness import REPO_ROOT, free_port
from harness.jobs import FINAL, get_job, submit, wait_for, wait_for_log
from harness.service_hubs import start_job_hub

from spawner.service.lifetime import PidFile, ServiceAlreadyRunning, is_gpuslice_service

PYTHON = sys.executable


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def wait_until_gone(pid: int, timeout: float) -> float:
    """Seconds until ``pid`` exited; fails the test after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if gone(pid):
            return time.monotonic() - started
        time.sleep(0.05)
    pytest.fail(f"process {pid} still runs after {timeout:g} s")


def sleeper(*arguments: str) -> subprocess.Popen:
    """A process that only sleeps, with ``arguments`` on its command line."""
    process = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(120)", *arguments])
    for _ in range(200):
        if "import time; time.sleep(120)" in " ".join(_command_line(process.pid)):
            break
        time.sleep(0.02)
    return process


def _command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except FileNotFoundError:
        return []


# ------------------------------------------------------------------------------ pid file


def test_a_pid_file_is_written_held_and_removed(tmp_path):
    path = tmp_path / "state" / "gpuslice.pid"
    pid_file = PidFile(path)
    pid_file.claim()
    assert path.read_text() == f"{os.getpid()}\n" and pid_file.taken_over is None
    pid_file.release()
    assert not path.exists()


def test_a_stale_pid_file_is_taken_over(tmp_path):
    dead = subprocess.run([PYTHON, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = tmp_path / "gpuslice.pid"
    path.write_text(dead.stdout)
    pid_file = PidFile(path)
    pid_file.claim()
    assert pid_file.taken_over == int(dead.stdout) and path.read_text() == f"{os.getpid()}\n"
    pid_file.release()


def test_a_pid_reused_by_another_program_is_taken_over(tmp_path):
    other = sleeper()
    try:
        path = tmp_path / "gpuslice.pid"
        path.write_text(f"{other.pid}\n")
        assert not is_gpuslice_service(other.pid)
        pid_file = PidFile(path)
        pid_file.claim()
        assert pid_file.taken_over == other.pid
        pid_file.release()
    finally:
        other.kill()
        other.wait()


def test_a_live_service_without_the_lock_is_not_taken_over(tmp_path):
    """A service of an older version wrote its pid but holds no lock: its command line tells."""
    service = sleeper("-m", "spawner.service")
    try:
        assert is_gpuslice_service(service.pid)
        path = tmp_path / "gpuslice.pid"
        path.write_text(f"{service.pid}\n")
        with pytest.raises(ServiceAlreadyRunning, match=f"pid {service.pid}"):
            PidFile(path).claim()
        assert path.read_text() == f"{service.pid}\n"
    finally:
        service.kill()
        service.wait()


HOLDS_THE_PID_FILE = """
import sys, time
from spawner.service.lifetime import PidFile
PidFile(sys.argv[1]).claim()
print("held", flush=True)
time.sleep(120)
"""


def test_a_live_holder_of_the_pid_file_keeps_a_new_service_from_starting(tmp_path):
    path = tmp_path / "gpuslice.pid"
    holder = subprocess.Popen(
        [PYTHON, "-c", HOLDS_THE_PID_FILE, str(path)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ServiceAlreadyRunning, match=f"pid {holder.pid}") as refused:
            PidFile(path).claim()
        assert f"kill {holder.pid}" in str(refused.value)

        # The real service says the same, and starts nothing.
        started = subprocess.run(
            [
                PYTHON,
                "-m",
                "spawner.service",
                f"--ledger-url=sqlite:///{tmp_path / 'ledger.sqlite'}",
                "--Inventory.source=simulated",
                f"--GPUSliceService.service_url=http://127.0.0.1:{free_port()}",
                f"--pid-file={path}",
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert started.returncode == 1, started.stderr
        assert f"another gpuslice service (pid {holder.pid}) is running" in started.stderr
        assert not (tmp_path / "ledger.sqlite").exists(), "it refused before touching the ledger"
        assert path.read_text() == f"{holder.pid}\n"
    finally:
        holder.kill()
        holder.wait()

    # Killed with SIGKILL, the holder leaves its file behind; the next claim takes it over.
    pid_file = PidFile(path)
    pid_file.claim()
    assert pid_file.taken_over == holder.pid
    pid_file.release()


# ------------------------------------------------------------------------------- the hub

FOLLOWS_ITS_PARENT = """
import asyncio, os, sys, time
from spawner.service import lifetime
lifetime.follow_the_hub()
if sys.argv[1] == "without-death-signal":
    lifetime.set_parent_death_signal(0)  # as if the hub had died before it could be asked for
print(os.getpid(), flush=True)
if lifetime.started_by_a_hub():  # as GPUSliceService.stop_with_hub is by default
    asyncio.run(lifetime.watch_the_hub(lambda: None, 0.2))
    sys.exit(3)
time.sleep(120)
"""

STARTS_A_CHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], stdout=sys.stdout)
time.sleep(120)
"""


@pytest.mark.parametrize("how", ["with-death-signal", "without-death-signal"])
def test_a_service_stops_when_the_process_that_started_it_is_killed(how):
    environment = {**os.environ, "JUPYTERHUB_SERVICE_NAME": "gpuslice", "PYTHONPATH": str(REPO_ROOT)}
    parent = subprocess.Popen(
        [PYTHON, "-c", STARTS_A_CHILD, FOLLOWS_ITS_PARENT, how],
        env=environment,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        child = int(parent.stdout.readline())
        time.sleep(0.5)
        assert not gone(child)
        parent.kill()
        parent.wait()
        wait_until_gone(child, timeout=5)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_service_started_without_a_hub_does_not_follow_its_parent():
    environment = {key: value for key, value in os.environ.items() if key != "JUPYTERHUB_SERVICE_NAME"}
    environment["PYTHONPATH"] = str(REPO_ROOT)
    parent = subprocess.Popen(
        [PYTHON, "-c", STARTS_A_CHILD, FOLLOWS_ITS_PARENT, "with-death-signal"],
        env=environment,
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    try:
        parent.kill()
        parent.wait()
        time.sleep(1.5)
        assert not gone(child), "a service nobody's hub started outlives whoever started it"
    finally:
        os.kill(child, signal.SIGKILL)


def test_only_a_service_the_hub_started_stops_with_it_by_default(monkeypatch):
    from spawner.service.app import GPUSliceService

    monkeypatch.delenv("JUPYTERHUB_SERVICE_NAME", raising=False)
    assert GPUSliceService().stop_with_hub is False
    monkeypatch.setenv("JUPYTERHUB_SERVICE_NAME", "gpuslice")
    assert GPUSliceService().stop_with_hub is True


WAITS_FOR_FLAG = """\
import pathlib, time
print("before the hub was killed", flush=True)
flag = pathlib.Path({flag!r})
while not flag.exists():
    time.sleep(0.1)
print("after the hub came back", flush=True)
"""


@pytest.mark.slow
def test_a_hub_killed_with_sigkill_and_restarted_gets_a_working_service(tmp_path_factory, tmp_path):
    hub = start_job_hub(tmp_path_factory.mktemp("killed-hub"))
    try:
        alice = hub.as_user("alice")
        flag = tmp_path / "go-on"
        job = submit(alice, hub, WAITS_FOR_FLAG.format(flag=str(flag)), name="outlives the hub")
        wait_for(alice, hub, job["id"], ("running",))
        wait_for_log(alice, hub, job["id"], "before the hub was killed")
        old_service = hub.service_pid()
        assert old_service is not None, hub.log()

        hub.process.kill()  # kill -9: the hub stops nothing
        hub.process.wait()
        # The service goes with its hub (it stops as when the hub stops it) ...
        wait_until_gone(old_service, timeout=15)
        # ... but the job it started runs on: its supervisor is no child the service takes along.
        assert get_state_without_service(hub, job["id"]) == "running"

        # The same hub again, on the same state directory and ports.
        started = time.monotonic()
        hub.start(timeout=60)
        assert time.monotonic() - started < 60
        new_service = hub.service_pid()
        assert new_service not in (None, old_service)
        assert requests.get(hub.api + "health", timeout=10).json() == {"status": "ok"}
        assert "Address already in use" not in hub.log()

        # The new service found the job running, and sees it to its end.
        after = get_job(alice, hub, job["id"])["job"]
        assert after["state"] == "running"
        flag.touch()
        done = wait_for(alice, hub, job["id"], FINAL)
        assert (done["state"], done["exit_code"]) == ("succeeded", 0)
        log = alice.get(hub.api + f"jobs/{job['id']}/logs", timeout=30).json()["data"]
        assert log.index("before the hub was killed") < log.index("after the hub came back")
    finally:
        hub.stop()


def get_state_without_service(hub, job_id: str) -> str:
    """The job's state as its run directory tells it, while no service answers: running or not."""
    runs = list((hub.state_dir / "jobs").glob(f"{job_id}-*"))
    assert len(runs) == 1, runs
    return "running" if not (runs[0] / "exit.json").exists() else "ended"
