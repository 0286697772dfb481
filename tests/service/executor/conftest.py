"""Fixtures and helpers: a LocalExecutor on a fresh jobs directory, and jobs written as Python snippets."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time

import pytest

from spawner.service.executor import ExecutionSpec, ExecutionState, ExecutionStatus, LocalExecutor


@pytest.fixture
def jobs_dir(tmp_path):
    return tmp_path / "jobs"


@pytest.fixture
def executor(jobs_dir):
    """An executor with a one-second grace; any job a failed test left running is killed afterwards."""
    executor = LocalExecutor(jobs_dir=str(jobs_dir), grace_seconds=1.0)
    yield executor
    if jobs_dir.exists():
        for directory in jobs_dir.iterdir():
            asyncio.run(executor.stop(directory.name, grace_s=0))


def python_job(
    job_id: str,
    code: str,
    *,
    tmp_path,
    time_limit_s: float = 60.0,
    owner: str = "nobody",
    environment: dict[str, str] | None = None,
    gpu_uuids: tuple[str, ...] = (),
) -> ExecutionSpec:
    """A job running ``code`` (dedented) with this interpreter, in ``tmp_path``."""
    return ExecutionSpec(
        job_id=job_id,
        owner=owner,
        argv=[sys.executable, "-c", textwrap.dedent(code)],
        workdir=str(tmp_path),
        environment=dict(environment or {}),
        gpu_uuids=list(gpu_uuids),
        time_limit_s=time_limit_s,
    )


async def wait_until_ended(executor, job_id: str, timeout_s: float = 15.0) -> ExecutionStatus:
    """The job's status once it is no longer running; fails the test if it runs past ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while (status := await executor.status(job_id)).state is ExecutionState.running:
        assert time.monotonic() < deadline, f"job {job_id} still running after {timeout_s} s"
        await asyncio.sleep(0.02)
    return status


async def wait_for_log(executor, job_id: str, text: bytes, timeout_s: float = 15.0) -> bytes:
    """The job's whole log once it contains ``text``; fails the test if it does not in time."""
    deadline = time.monotonic() + timeout_s
    while text not in (log := (await executor.read_log(job_id, 0, 1 << 20))[0]):
        assert time.monotonic() < deadline, f"job {job_id} never wrote {text!r}; log so far: {log!r}"
        await asyncio.sleep(0.02)
    return log
