"""Root never follows a user's path: the two symlink attacks of issue 10, run for real.

A real hub and service (running as root) with ``LocalExecutor.run_as_owner``, and jobs of an
unprivileged system account run as that account. The jobs plant symbolic links in their own
folders, where the service reads their results and, when a preempted job starts again, writes
its script or signed payload. The service must neither hand out a root-only file nor write to a
root-owned one. Skipped where there is no unprivileged account, or no interpreter it may run.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import cloudpickle
import pytest
import requests
from harness.hub import REPO_ROOT, HubProcess
from harness.jobs import FINAL, wait_for, wait_for_log, wait_until
from harness.service_hubs import service_hub

from spawner.magic.capture import capture, cell_names, pack

from .test_job_files_unit import SYSTEM_PYTHON, UNPRIVILEGED, unprivileged_account, world_traversable_dir

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SECRET = "root-only secret 0b5e"
ORIGINAL = "root's file, unchanged\n"
TIME_LIMIT = "3m"
"""Long enough for every test; a job a failed test leaves behind ends by itself."""


def cell_jobs_runnable() -> str | None:
    """Why the unprivileged account cannot run the runner of cells here, or None if it can.

    It needs this package and cloudpickle, importable by that account, in a Python of the same
    major.minor as this one (the cell is pickled here).
    """
    done = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-c",
            "import sys, cloudpickle, spawner.service.runner; print(*sys.version_info[:2])",
        ],
        user=UNPRIVILEGED,
        env={"PYTHONPATH": job_pythonpath()},
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        return f"{UNPRIVILEGED} cannot import the runner with {SYSTEM_PYTHON}: {done.stderr.strip()[-300:]}"
    if done.stdout.split() != [str(part) for part in sys.version_info[:2]]:
        return f"{SYSTEM_PYTHON} is Python {done.stdout.strip()}, cells here are packed by {sys.version}"
    return None


def job_pythonpath() -> str:
    """This checkout and the folder cloudpickle came from, for the runner of cell jobs."""
    return f"{REPO_ROOT}:{Path(cloudpickle.__file__).resolve().parents[1]}"


@pytest.fixture(scope="module")
def hub():
    unprivileged_account()
    state = world_traversable_dir("gpuslice-safety-hub-")
    hub = service_hub(
        state,
        service_args=[
            "--LeaseReconciler.grace_seconds=3600",
            "--BatchScheduler.interval_seconds=0.5",
            "--LocalExecutor.run_as_owner=True",
            f"--JobService.python={SYSTEM_PYTHON}",
        ],
    )
    try:
        hub.start()
        response = requests.post(
            f"{hub.url}/hub/api/users/{UNPRIVILEGED}",
            headers={"Authorization": f"token {hub.admin_token}"},
            timeout=30,
        )
        assert response.status_code in (201, 409), response.text
        yield hub
    finally:
        cancel_everything(hub)
        hub.stop()
        shutil.rmtree(state, ignore_errors=True)


def cancel_everything(hub: HubProcess) -> None:
    """Cancel the jobs a failed test left running, and give back the leases it held."""
    if hub.process is None or hub.process.poll() is not None:
        return
    service = hub.client(hub.service_token)
    try:
        for job in service.get(hub.api + "jobs?all=1", timeout=30).json()["jobs"]:
            if job["state"] not in FINAL:
                service.post(hub.api + f"jobs/{job['id']}/cancel", timeout=60)
        for lease in service.get(hub.api + "leases", timeout=30).json()["leases"]:
            service.delete(hub.api + f"leases/{lease['id']}", timeout=30)
    except (requests.RequestException, KeyError, ValueError):
        pass


@pytest.fixture
def root_only(hub):
    """Root's files in a directory only root may enter: a secret and files that must not change."""
    directory = hub.state_dir / f"root-only-{uuid.uuid4().hex[:8]}"
    directory.mkdir(mode=0o700)
    (directory / "secret").write_text(SECRET)
    (directory / "secret-summary.json").write_text(
        json.dumps({"values_available": True, "values": [SECRET], "error": {"message": SECRET}})
    )
    for name in ("victim-script", "victim-payload", "victim-tmp"):
        (directory / name).write_text(ORIGINAL)
    (directory / "victim-dir").mkdir()
    (directory / "victim-dir" / "keep").write_text(ORIGINAL)
    for path in directory.rglob("*"):
        path.chmod(0o700 if path.is_dir() else 0o600)
    return directory


def submit_script(session, hub: HubProcess, script: str, **fields) -> dict:
    body = {
        "name": "attack",
        "script": textwrap.dedent(script),
        "gpus": 0,
        "time_limit": TIME_LIMIT,
        **fields,
    }
    response = session.post(hub.api + "jobs", json=body, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["job"]


def submit_cell(session, hub: HubProcess, cell: str, **fields) -> dict:
    cell = textwrap.dedent(cell)
    names = cell_names(cell)
    taken = capture(names.free, {}, workdir=Path("/"), loaded_modules={})
    payload = pack(
        taken, source=cell, filename="<cell>", mode="cell", returns=names.assigned, out_given=False
    )
    body = {
        "name": "attack",
        "cell": {
            "payload": base64.b64encode(payload).decode(),
            "python": ".".join(map(str, sys.version_info[:3])),
        },
        "environment": {"PYTHONPATH": job_pythonpath()},
        "gpus": 0,
        "time_limit": TIME_LIMIT,
        **fields,
    }
    response = session.post(hub.api + "jobs", json=body, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["job"]


def ended(session, hub: HubProcess, job: dict) -> dict:
    done = wait_for(session, hub, job["id"], FINAL, timeout=90)
    log = session.get(hub.api + f"jobs/{job['id']}/logs", timeout=30).json()["data"]
    return {**done, "log": log}


# --------------------------------------------------------------------------- reading as root


def test_a_script_job_cannot_read_a_root_only_file_through_its_results_file(hub, root_only):
    """The issue's attack as written: the job links its results file to a root-only file."""
    nobody = hub.as_user(UNPRIVILEGED)
    job = submit_script(
        nobody,
        hub,
        f"""
        import os
        try:
            open({str(root_only / "secret")!r}).read()
        except OSError as error:
            print("direct read refused:", os.getuid(), error.errno, flush=True)
        results = os.environ["GPUSLICE_RESULTS_DIR"]
        os.symlink({str(root_only / "secret")!r}, os.path.join(results, "values.pickle"))
        """,
    )
    done = ended(nobody, hub, job)
    assert done["state"] == "succeeded", done
    assert f"direct read refused: {pwd.getpwnam(UNPRIVILEGED).pw_uid} 13" in done["log"]  # EACCES

    response = nobody.get(hub.api + f"jobs/{job['id']}/result/values", timeout=30)
    assert SECRET.encode() not in response.content
    assert response.status_code == 404, response.text
    assert "values.pickle is a symbolic link" in response.json()["message"]
    assert (root_only / "secret").read_text() == SECRET


def test_a_cell_job_cannot_read_root_only_files_through_its_values_or_its_summary(hub, root_only):
    why = cell_jobs_runnable()
    if why:
        pytest.skip(why)
    nobody = hub.as_user(UNPRIVILEGED)
    job = submit_cell(
        nobody,
        hub,
        f"""
        import os
        results = os.environ["GPUSLICE_RESULTS_DIR"]
        os.symlink({str(root_only / "secret")!r}, os.path.join(results, "values.pickle"))
        os.symlink({str(root_only / "secret-summary.json")!r}, os.path.join(results, "summary.json"))
        os._exit(0)  # before the runner writes its own results over the links
        """,
    )
    done = ended(nobody, hub, job)
    assert done["state"] == "succeeded", done

    result = nobody.get(hub.api + f"jobs/{job['id']}/result", timeout=30)
    assert result.status_code == 200, result.text
    assert SECRET not in result.text
    assert (result.json()["values_available"], result.json()["values"], result.json()["error"]) == (
        False,
        [],
        None,
    )
    values = nobody.get(hub.api + f"jobs/{job['id']}/result/values", timeout=30)
    assert SECRET.encode() not in values.content
    assert values.status_code == 404 and "values.pickle is a symbolic link" in values.json()["message"]


# ------------------------------------------------------------------ writing as root, on a rerun

PLANT = """
import os, sys, time
files = os.environ["GPUSLICE_JOB_FILES"]
marker = os.path.join(files, "planted")
if os.path.exists(marker):
    outcome = "second run"
else:
    for name, target in links:
        path = os.path.join(files, name)
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        elif os.path.lexists(path):
            os.unlink(path)
        os.symlink(target, path)
    open(marker, "w").close()
    print("planted", flush=True)
    time.sleep(170)
print(outcome, flush=True)
"""
"""A job's code: on its first run it puts ``links`` (name -> root's file) in its files directory
and waits to be preempted; on its second it says so."""


def planting(links: list[tuple[str, Path]]) -> str:
    return f"links = {[(name, str(target)) for name, target in links]!r}\n" + PLANT


def preempt_and_restart(hub: HubProcess, session, job: dict) -> dict:
    """Once ``job`` (on a borrowed dev GPU) has planted its links, take both dev GPUs for a slice,
    which preempts it, then give them back; the job once it has ended, after its second run."""
    wait_for(session, hub, job["id"], ("running",), timeout=60)
    wait_for_log(session, hub, job["id"], "planted", timeout=60)
    service = hub.client(hub.service_token)
    body = {
        "lease_id": f"reclaim-{uuid.uuid4().hex}",
        "user": "carol",
        "holder": "carol/",
        "request": {"gpus": 2, "pool": "dev"},
    }

    def granted():
        response = service.post(hub.api + "leases", json=body, timeout=30)
        if response.status_code == 409:
            return None
        assert response.status_code == 201, response.text
        return response.json()["lease"]

    # Granted once the job's process is gone. (Preempted from one dev GPU, the job may start again
    # on the other before the slice gets both: it is preempted there too.)
    lease = wait_until(hub, "the slice granted once the job was preempted", granted, timeout=90)
    assert service.delete(hub.api + f"leases/{lease['id']}", timeout=30).status_code == 200
    return ended(session, hub, job)


def test_a_preempted_script_job_cannot_make_the_service_write_through_its_links(hub, root_only):
    """The issue's second attack: the job replaces its script with a link to a root-owned file; the
    service writes the script again when the job starts after its preemption."""
    nobody = hub.as_user(UNPRIVILEGED)
    job = submit_script(nobody, hub, planting([("script.py", root_only / "victim-script")]), gpus=1)
    again = preempt_and_restart(hub, nobody, job)
    assert (root_only / "victim-script").read_text() == ORIGINAL
    assert again["state"] == "succeeded" and again["attempts"] >= 2, again
    assert "second run" in again["log"]


def test_a_preempted_cell_job_cannot_make_the_service_write_through_its_links(hub, root_only):
    """The same for a cell: links at its signed payload and at the payload's temporary file."""
    why = cell_jobs_runnable()
    if why:
        pytest.skip(why)
    nobody = hub.as_user(UNPRIVILEGED)
    links = [("cell.json", root_only / "victim-payload"), (".cell.json.tmp", root_only / "victim-tmp")]
    job = submit_cell(nobody, hub, planting(links), gpus=1)
    again = preempt_and_restart(hub, nobody, job)
    for name in ("victim-payload", "victim-tmp"):
        assert (root_only / name).read_text() == ORIGINAL, name
    assert again["state"] == "succeeded" and again["attempts"] >= 2, again
    values = nobody.get(hub.api + f"jobs/{job['id']}/result/values", timeout=30)
    assert values.status_code == 200, values.text
    assert cloudpickle.loads(values.content)["outcome"] == "second run"


def test_a_preempted_job_whose_results_are_a_link_starts_again_with_fresh_results(hub, root_only):
    """Its results directory replaced by a link to root's directory: the service removes the link,
    never what it points to, and makes a new results directory the job can write."""
    nobody = hub.as_user(UNPRIVILEGED)
    job = submit_script(nobody, hub, planting([("results", root_only / "victim-dir")]), gpus=1)
    again = preempt_and_restart(hub, nobody, job)
    assert (root_only / "victim-dir" / "keep").read_text() == ORIGINAL
    assert again["state"] == "succeeded" and again["attempts"] >= 2, again


MOVE_IN = """
import os, sys, time
files = os.environ["GPUSLICE_JOB_FILES"]
loot = os.path.join(files, "loot")
if os.path.exists(os.path.join(files, "planted")):
    try:
        print("read:", open(loot).read(), flush=True)
    except OSError as error:
        print("refused:", error.errno, flush=True)
else:
    os.rename({moved!r}, loot)
    open(os.path.join(files, "planted"), "w").close()
    print("planted", flush=True)
    time.sleep(170)
"""
"""A job that moves a file of root's from its owner's own folder into its files directory, to be
given it when the service gives it its files again on the next start."""


def test_a_file_of_roots_moved_into_the_job_files_is_not_given_to_the_owner(hub, root_only):
    account = unprivileged_account()
    home = hub.state_dir / f"home-{uuid.uuid4().hex[:8]}"
    home.mkdir(mode=0o700)
    os.chown(home, account.pw_uid, account.pw_gid)
    (home / "root-made").write_text(SECRET)
    (home / "root-made").chmod(0o600)  # root's, in a folder of the owner's: it may move it, not read it
    nobody = hub.as_user(UNPRIVILEGED)
    job = submit_script(nobody, hub, MOVE_IN.format(moved=str(home / "root-made")), gpus=1)
    again = preempt_and_restart(hub, nobody, job)
    assert SECRET not in again["log"]
    assert "refused: 13" in again["log"], again["log"]  # EACCES
    loot = hub.state_dir / "job-scripts" / job["id"] / "loot"
    assert loot.lstat().st_uid == 0
