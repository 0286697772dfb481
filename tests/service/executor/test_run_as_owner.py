"""Jobs run as their owner's system account when asked, and are refused clearly when that cannot be."""

from __future__ import annotations

import asyncio
import os
import pwd

import pytest

from spawner.service.executor import ExecutionRefused, ExecutionSpec, ExecutionState

from .conftest import python_job, wait_until_ended

pytestmark = pytest.mark.timeout(30)


def test_an_owner_without_a_system_account_is_refused_clearly(executor, jobs_dir, tmp_path):
    executor.run_as_owner = True
    job = python_job("homeless", "pass", tmp_path=tmp_path, owner="no-such-user-gpuslice")
    with pytest.raises(ExecutionRefused, match="'no-such-user-gpuslice' has no system account"):
        asyncio.run(executor.start(job))
    assert not (jobs_dir / "homeless").exists(), "a refused job leaves nothing behind"


def test_without_run_as_owner_the_job_runs_as_the_service(executor, tmp_path):
    job = python_job(
        "mine", "import os; print(os.getuid())", tmp_path=tmp_path, owner="no-such-user-gpuslice"
    )

    async def scenario():
        await executor.start(job)
        await wait_until_ended(executor, "mine")
        return (await executor.read_log("mine"))[0]

    assert asyncio.run(scenario()) == f"{os.getuid()}\n".encode()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another account needs the service to be root")
def test_as_root_the_job_runs_as_its_owner(executor, tmp_path):
    executor.run_as_owner = True
    owner = pwd.getpwnam("nobody")
    job = ExecutionSpec(
        job_id="as-nobody",
        owner="nobody",
        argv=["/bin/sh", "-c", 'id -u; id -g; echo "$HOME $USER"; pwd'],
        workdir="/",
        environment={"PATH": "/usr/bin:/bin"},
        gpu_uuids=[],
        time_limit_s=10,
    )

    async def scenario():
        await executor.start(job)
        ended = await wait_until_ended(executor, "as-nobody")
        return ended, (await executor.read_log("as-nobody"))[0].decode().splitlines()

    ended, lines = asyncio.run(scenario())
    assert (ended.state, ended.exit_code) == (ExecutionState.exited, 0)
    assert lines == [str(owner.pw_uid), str(owner.pw_gid), f"{owner.pw_dir} nobody", "/"]
