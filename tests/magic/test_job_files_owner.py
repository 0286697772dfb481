"""With run_as_owner, the job's own files become its owner's, so it can read its payload and write results."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cloudpickle
import pytest

from spawner.magic.capture import capture, pack
from spawner.service import payload as signing
from spawner.service.executor.base import ExecutionSpec, ExecutionState
from spawner.service.executor.local import LocalExecutor
from spawner.service.payload import JOB_FILES_VARIABLE

OWNER = "nobody"
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_the_job_files_directory_and_everything_in_it_go_to_the_owner(tmp_path):
    account = pwd.getpwnam(OWNER)
    files = tmp_path / "job-files"
    (files / "results").mkdir(parents=True)
    (files / "cell.json").write_text("{}")
    workdir = tmp_path / "shared-workdir"
    workdir.mkdir()
    spec = ExecutionSpec(
        job_id="job-1-1",
        owner=OWNER,
        argv=["python", "-m", "spawner.service.runner", str(files / "cell.json")],
        workdir=str(workdir),
        environment={JOB_FILES_VARIABLE: str(files)},
        gpu_uuids=[],
        time_limit_s=60,
    )
    LocalExecutor.give_job_files_to(spec, OWNER)
    for path in (files, files / "results", files / "cell.json"):
        assert (path.stat().st_uid, path.stat().st_gid) == (account.pw_uid, account.pw_gid), path
    assert workdir.stat().st_uid == os.geteuid()  # the working directory is not the executor's to give


def test_a_job_without_a_files_directory_changes_nothing(tmp_path):
    spec = ExecutionSpec("job-2-1", OWNER, ["true"], str(tmp_path), {}, [], 60)
    LocalExecutor.give_job_files_to(spec, OWNER)
    assert tmp_path.stat().st_uid == os.geteuid()


def interpreter_for(account: str) -> tuple[str, str]:
    """A Python ``account`` can run that loads this package and cloudpickle, with its PYTHONPATH.

    This interpreter first; where it lives in a private home (a pyenv under /root), the system's
    ``python3`` of the same major.minor, given this checkout and the folder cloudpickle came from.
    """
    checkout = str(Path(__file__).resolve().parents[2])
    candidates = [
        (sys.executable, checkout),
        (SYSTEM_PYTHON, f"{checkout}:{Path(cloudpickle.__file__).resolve().parents[1]}"),
    ]
    same_version = f"import sys, cloudpickle; assert sys.version_info[:2] == {tuple(sys.version_info[:2])}"
    problems = []
    for python, pythonpath in candidates:
        try:
            subprocess.run(
                [python, "-c", same_version],
                user=account,
                env={"PYTHONPATH": pythonpath},
                check=True,
                capture_output=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError) as error:
            problems.append(f"{python}: {error}")
            continue
        return python, pythonpath
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    pytest.skip(f"{account} cannot run a Python {version} with this package and cloudpickle: {problems}")


@pytest.mark.skipif(os.geteuid() != 0, reason="running a job as another account needs root")
def test_a_cell_job_run_as_its_owner_reads_its_payload_and_writes_its_results():
    """The whole path: signed payload written by root, job run as nobody, results written by nobody."""
    account = pwd.getpwnam(OWNER)
    interpreter, pythonpath = interpreter_for(OWNER)
    root = Path(tempfile.mkdtemp(prefix="gpuslice-owner-"))
    root.chmod(0o755)  # the owner must reach its files directory, as under the service's state dir
    try:
        files = root / "job-scripts" / "job-7"
        (files / "results").mkdir(parents=True, mode=0o700)
        files.chmod(0o700)
        workdir = root / "work"
        workdir.mkdir()
        os.chown(workdir, account.pw_uid, account.pw_gid)
        taken = capture([], {}, workdir=workdir, loaded_modules={})
        cell = "import os\nuid = os.getuid()\n"
        bundle = pack(taken, source=cell, filename="<cell>", mode="cell", returns=["uid"], out_given=False)
        key = signing.job_key(b"k" * 32, "job-7")
        python = ".".join(map(str, sys.version_info[:3]))
        signing.write_signed_payload(files, key, "job-7", python, bundle)
        executor = LocalExecutor(jobs_dir=str(root / "executor"), run_as_owner=True)
        spec = ExecutionSpec(
            job_id="job-7-1",
            owner=OWNER,
            argv=[interpreter, "-m", "spawner.service.runner", str(files / signing.PAYLOAD_FILE)],
            workdir=str(workdir),
            environment={
                JOB_FILES_VARIABLE: str(files),
                signing.RESULTS_VARIABLE: str(files / "results"),
                signing.KEY_VARIABLE: key.hex(),
                "PYTHONPATH": pythonpath,
                "PATH": "/usr/bin:/bin",
            },
            gpu_uuids=[],
            time_limit_s=60,
        )

        async def scenario():
            await executor.start(spec)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                status = await executor.status("job-7-1")
                if status.state is not ExecutionState.running:
                    return status, (await executor.read_log("job-7-1"))[0].decode()
                await asyncio.sleep(0.1)
            raise AssertionError("the job did not end within 60 s")

        status, log = asyncio.run(scenario())
        assert status.exit_code == 0, log
        values = cloudpickle.loads((files / "results" / signing.VALUES_FILE).read_bytes())
        assert values == {"uid": account.pw_uid}
    finally:
        shutil.rmtree(root, ignore_errors=True)
