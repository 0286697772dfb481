"""Jobs outlive the service: a new executor on the same jobs directory finds them, and tells the lost ones."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from spawner.service.executor import ExecutionState, LocalExecutor

from .conftest import python_job, wait_until_ended

pytestmark = pytest.mark.timeout(30)


def waits_for(go, exit_code: int) -> str:
    """A job that prints "waiting", then exits with ``exit_code`` once the file ``go`` exists."""
    return f"""
        import os, sys, time
        print("waiting", flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        sys.exit({exit_code})
    """


def test_a_new_executor_finds_a_running_job_and_later_its_exit_code(executor, jobs_dir, tmp_path):
    go = tmp_path / "go"

    async def scenario():
        started = await executor.start(python_job("survivor", waits_for(go, 5), tmp_path=tmp_path))
        restarted = LocalExecutor(jobs_dir=str(jobs_dir))
        found = await restarted.status("survivor")
        go.touch()
        return started, found, await wait_until_ended(restarted, "survivor")

    started, found, ended = asyncio.run(scenario())
    assert (found.state, found.pid) == (ExecutionState.running, started.pid)
    assert (ended.state, ended.exit_code) == (ExecutionState.exited, 5)


def test_the_job_survives_its_service_being_killed_with_its_process_group(jobs_dir, tmp_path):
    go = tmp_path / "go"
    job = python_job("orphan", waits_for(go, 7), tmp_path=tmp_path)
    service = textwrap.dedent(
        f"""
        import asyncio, json, sys, time
        from spawner.service.executor import ExecutionSpec, LocalExecutor
        spec = ExecutionSpec(**json.loads(sys.argv[1]))
        status = asyncio.run(LocalExecutor(jobs_dir={str(jobs_dir)!r}).start(spec))
        print(status.state.value, flush=True)
        time.sleep(60)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", service, json.dumps(job.__dict__)],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert process.stdout.readline() == b"running\n"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    restarted = LocalExecutor(jobs_dir=str(jobs_dir))

    async def scenario():
        found = await restarted.status("orphan")
        go.touch()
        return found, await wait_until_ended(restarted, "orphan")

    found, ended = asyncio.run(scenario())
    assert found.state is ExecutionState.running
    assert (ended.state, ended.exit_code) == (ExecutionState.exited, 7)


def test_a_new_executor_can_stop_a_job_it_did_not_start(executor, jobs_dir, tmp_path):
    async def scenario():
        await executor.start(python_job("inherited", "import time; time.sleep(30)", tmp_path=tmp_path))
        return await LocalExecutor(jobs_dir=str(jobs_dir)).stop("inherited", grace_s=5)

    stopped = asyncio.run(scenario())
    assert (stopped.state, stopped.exit_code, stopped.stopped) == (ExecutionState.exited, -15, True)


def test_a_job_killed_with_its_supervisor_is_lost(executor, jobs_dir, tmp_path):
    async def scenario():
        started = await executor.start(python_job("doomed", "import time; time.sleep(30)", tmp_path=tmp_path))
        supervisor = json.loads((jobs_dir / "doomed" / "supervisor.pid").read_text())["pid"]
        os.kill(supervisor, signal.SIGKILL)
        os.killpg(started.pid, signal.SIGKILL)
        return await wait_until_ended(LocalExecutor(jobs_dir=str(jobs_dir)), "doomed")

    lost = asyncio.run(scenario())
    assert (lost.state, lost.exit_code, lost.timed_out, lost.stopped) == (
        ExecutionState.lost,
        None,
        False,
        False,
    )


def test_a_job_whose_supervisor_alone_died_still_runs_and_can_be_stopped(executor, jobs_dir, tmp_path):
    async def scenario():
        started = await executor.start(
            python_job("unwatched", "import time; time.sleep(30)", tmp_path=tmp_path)
        )
        supervisor = json.loads((jobs_dir / "unwatched" / "supervisor.pid").read_text())["pid"]
        os.kill(supervisor, signal.SIGKILL)
        await asyncio.sleep(0.2)
        found = await executor.status("unwatched")
        stopped = await executor.stop("unwatched", grace_s=1)
        return started, found, stopped

    started, found, stopped = asyncio.run(scenario())
    assert (found.state, found.pid) == (ExecutionState.running, started.pid)
    assert (stopped.state, stopped.exit_code, stopped.stopped) == (ExecutionState.lost, None, True)
