"""A local job from start to end: its log, its exit code, its environment, stopping it, its time limit."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from spawner.service.executor import ExecutionState, UnknownJob

from .conftest import python_job, wait_for_log, wait_until_ended

pytestmark = pytest.mark.timeout(30)

TRAPS_SIGTERM = """
    import signal, sys, time
    def checkpoint(*_):
        print("checkpoint", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, checkpoint)
    print("ready", flush=True)
    time.sleep(30)
"""
IGNORES_SIGTERM = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    time.sleep(30)
"""


def test_every_line_of_stdout_and_stderr_reaches_the_log(executor, tmp_path):
    code = """
        import sys
        for n in range(2000):
            print(f"out {n}")
            if n % 100 == 0:
                print(f"err {n}", file=sys.stderr)
    """

    async def scenario():
        started = await executor.start(python_job("lines", code, tmp_path=tmp_path))
        # A job this short may have ended by the time start() reports on it.
        assert started.state in (ExecutionState.running, ExecutionState.exited) and started.pid is not None
        ended = await wait_until_ended(executor, "lines")
        log, _ = await executor.read_log("lines", 0, 1 << 20)
        return ended, log.decode().splitlines()

    ended, lines = asyncio.run(scenario())
    assert (ended.state, ended.exit_code, ended.timed_out, ended.stopped) == (
        ExecutionState.exited,
        0,
        False,
        False,
    )
    assert [line for line in lines if line.startswith("out ")] == [f"out {n}" for n in range(2000)]
    assert [line for line in lines if line.startswith("err ")] == [f"err {n}" for n in range(0, 2000, 100)]


def test_exit_code_is_recorded(executor, tmp_path):
    async def scenario():
        await executor.start(python_job("three", "raise SystemExit(3)", tmp_path=tmp_path))
        return await wait_until_ended(executor, "three")

    ended = asyncio.run(scenario())
    assert (ended.state, ended.exit_code, ended.stopped) == (ExecutionState.exited, 3, False)


def test_job_sees_its_gpus_and_its_own_environment(executor, tmp_path):
    code = """
        import json, os
        names = ["CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "GPUSLICE_JOB_ID", "PYTHONUNBUFFERED", "MINE"]
        print(json.dumps({name: os.environ.get(name) for name in names}))
        print(os.getcwd())
    """
    job = python_job(
        "env", code, tmp_path=tmp_path, environment={"MINE": "kept"}, gpu_uuids=("GPU-aaaa", "GPU-bbbb")
    )

    async def scenario():
        await executor.start(job)
        await wait_until_ended(executor, "env")
        return (await executor.read_log("env"))[0].decode().splitlines()

    variables, workdir = asyncio.run(scenario())
    assert json.loads(variables) == {
        "CUDA_VISIBLE_DEVICES": "GPU-aaaa,GPU-bbbb",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "GPUSLICE_JOB_ID": "env",
        "PYTHONUNBUFFERED": "1",
        "MINE": "kept",
    }
    assert workdir == str(tmp_path)


def test_stop_lets_the_job_checkpoint_on_sigterm(executor, tmp_path):
    async def scenario():
        await executor.start(python_job("trap", TRAPS_SIGTERM, tmp_path=tmp_path))
        await wait_for_log(executor, "trap", b"ready")
        stopped = await executor.stop("trap", grace_s=10)
        again = await executor.stop("trap")
        return stopped, again, (await executor.read_log("trap"))[0]

    stopped, again, log = asyncio.run(scenario())
    assert (stopped.state, stopped.exit_code, stopped.stopped, stopped.timed_out) == (
        ExecutionState.exited,
        0,
        True,
        False,
    )
    assert b"checkpoint\n" in log
    assert again == stopped, "stopping an ended job changes nothing"


def test_stop_kills_a_job_that_ignores_sigterm_after_the_grace(executor, tmp_path):
    async def scenario():
        await executor.start(python_job("stubborn", IGNORES_SIGTERM, tmp_path=tmp_path))
        await wait_for_log(executor, "stubborn", b"ready")
        began = time.monotonic()
        stopped = await executor.stop("stubborn", grace_s=1)
        return stopped, time.monotonic() - began

    stopped, took_s = asyncio.run(scenario())
    assert (stopped.state, stopped.exit_code, stopped.stopped) == (ExecutionState.exited, -9, True)
    assert 1.0 <= took_s < 5.0


def test_time_limit_stops_the_job(executor, tmp_path):
    job = python_job("limited", "import time; time.sleep(30)", tmp_path=tmp_path, time_limit_s=1)

    async def scenario():
        began = time.monotonic()
        await executor.start(job)
        ended = await wait_until_ended(executor, "limited")
        return ended, time.monotonic() - began, (await executor.read_log("limited"))[0]

    ended, took_s, log = asyncio.run(scenario())
    assert (ended.state, ended.exit_code, ended.timed_out, ended.stopped) == (
        ExecutionState.exited,
        -15,
        True,
        False,
    )
    assert 1.0 <= took_s < 5.0
    assert b"time limit of 1 s reached" in log


def test_time_limit_is_not_enforced_when_turned_off(executor, tmp_path):
    executor.enforce_time_limit = False
    job = python_job("unlimited", "import time; time.sleep(1.5)", tmp_path=tmp_path, time_limit_s=0.5)

    async def scenario():
        await executor.start(job)
        return await wait_until_ended(executor, "unlimited")

    ended = asyncio.run(scenario())
    assert (ended.exit_code, ended.timed_out) == (0, False)


def test_read_log_streams_from_an_offset(executor, tmp_path):
    go = tmp_path / "go"
    code = f"""
        import os, time
        print("first")
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        print("second")
    """

    async def scenario():
        await executor.start(python_job("stream", code, tmp_path=tmp_path))
        await wait_for_log(executor, "stream", b"first\n")
        head, after_head = await executor.read_log("stream", 0, 3)
        rest, after_first = await executor.read_log("stream", after_head)
        nothing_yet, same_offset = await executor.read_log("stream", after_first)
        go.touch()
        await wait_until_ended(executor, "stream")
        second, after_second = await executor.read_log("stream", after_first)
        end, end_offset = await executor.read_log("stream", after_second)
        return [
            (head, after_head),
            (rest, after_first),
            (nothing_yet, same_offset),
            (second, after_second),
            (end, end_offset),
        ]

    assert asyncio.run(scenario()) == [
        (b"fir", 3),
        (b"st\n", 6),
        (b"", 6),
        (b"second\n", 13),
        (b"", 13),
    ]


def test_a_command_that_does_not_exist_ends_with_127_and_says_why(executor, tmp_path):
    job = python_job("missing", "", tmp_path=tmp_path)
    job = type(job)(**{**job.__dict__, "argv": [str(tmp_path / "no-such-program")]})

    async def scenario():
        started = await executor.start(job)
        return started, (await executor.read_log("missing"))[0]

    started, log = asyncio.run(scenario())
    assert (started.state, started.exit_code) == (ExecutionState.exited, 127)
    assert b"could not start" in log and b"no-such-program" in log


def test_a_job_id_cannot_be_started_twice_or_escape_the_jobs_dir(executor, tmp_path):
    async def scenario():
        await executor.start(python_job("once", "pass", tmp_path=tmp_path))
        await wait_until_ended(executor, "once")
        with pytest.raises(RuntimeError, match="already started"):
            await executor.start(python_job("once", "pass", tmp_path=tmp_path))
        with pytest.raises(ValueError, match="directory name"):
            await executor.start(python_job("../escape", "pass", tmp_path=tmp_path))

    asyncio.run(scenario())


def test_unknown_jobs_are_reported_as_such(executor):
    async def scenario():
        with pytest.raises(UnknownJob):
            await executor.status("never-started")
        with pytest.raises(UnknownJob):
            await executor.stop("never-started")
        with pytest.raises(UnknownJob):
            await executor.read_log("never-started")

    asyncio.run(scenario())
