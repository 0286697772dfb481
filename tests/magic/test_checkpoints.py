"""Checkpoints that survive preemption: the helper a job uses, the directory every job gets, and
the removal of old checkpoints.

The helper is tried in real processes stopped by a real SIGTERM; the directory and the resume on a
real hub whose scheduler preempts the job twice (a group within its guarantee taking its GPU back,
as in tests/service/test_preemption.py); the retention sweep on a real SQLite ledger.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from spawner import checkpoint
from spawner.ledger import Ledger
from spawner.ledger.jobs import JobSpec, JobStore
from spawner.service.checkpoints import CheckpointRetention
from spawner.service.executor.base import CHECKPOINT_DIR, ExecutionSpec, execution_environment
from spawner.service.jobs import JobService
from spawner.service.payload import JOB_FILES_VARIABLE

REPO_ROOT = Path(__file__).resolve().parents[2]

TRAINING = """\
import time
from spawner import checkpoint

state = checkpoint.load({"step": 0, "total": 0})
print("starting at step", state["step"], flush=True)
while state["step"] < STEPS:
    time.sleep(PAUSE)
    state["total"] += state["step"] ** 2
    state["step"] += 1
    print("step", state["step"], flush=True)
    checkpoint.save(state)
print("result", state["total"], flush=True)
"""
"""A training loop in the helper's two lines; its result is the sum of the squares below STEPS."""


def training(steps: int, pause: float) -> str:
    return f"STEPS = {steps}\nPAUSE = {pause}\n" + TRAINING


def run_until(process: subprocess.Popen, text: str, timeout: float = 30) -> str:
    """The process's output up to the first line holding ``text``."""
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
        if text in line:
            return seen
    pytest.fail(f"the job never printed {text!r}:\n{seen}")


def start(script: str, folder: Path | None) -> subprocess.Popen:
    environment = {key: value for key, value in os.environ.items() if key != checkpoint.CHECKPOINT_VARIABLE}
    if folder is not None:
        environment[checkpoint.CHECKPOINT_VARIABLE] = str(folder)
    environment["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
    )


def test_a_loop_stopped_twice_by_sigterm_resumes_each_time_and_ends_with_the_same_result(tmp_path):
    folder = tmp_path / "checkpoint"
    script = training(steps=40, pause=0.02)
    starts = []
    for stop_after in ("step 5", "step 20"):
        run = start(script, folder)
        starts.append(run_until(run, "starting at step"))
        run_until(run, stop_after)
        run.send_signal(signal.SIGTERM)
        rest = run.communicate(timeout=30)[0]
        assert run.returncode == checkpoint.STOPPED_EXIT_CODE, rest
        assert "stop signal received" in rest and "checkpoint saved; stopping as asked" in rest
    last = start(script, folder)
    output = last.communicate(timeout=60)[0]
    assert last.returncode == 0, output
    resumed_at = [int(text.split("starting at step")[1].split()[0]) for text in [*starts, output]]
    assert resumed_at[0] == 0 and 5 <= resumed_at[1] < resumed_at[2] < 40, resumed_at
    assert "resumed from the checkpoint in" in output
    assert f"result {sum(step * step for step in range(40))}" in output


def test_outside_a_job_the_same_loop_runs_through_and_keeps_nothing(tmp_path):
    done = start(training(steps=5, pause=0), None)
    output = done.communicate(timeout=60)[0]
    assert done.returncode == 0 and f"result {sum(s * s for s in range(5))}" in output, output
    assert "resumed" not in output


def test_a_callback_runs_on_the_stop_signal_and_a_save_without_end_on_stop_goes_on(tmp_path):
    script = textwrap.dedent(
        """\
        import os, signal
        from spawner import checkpoint
        checkpoint.on_stop(lambda: print("callback ran", flush=True))
        os.kill(os.getpid(), signal.SIGTERM)
        print("stop requested", checkpoint.stop_requested(), flush=True)
        print("saved", checkpoint.save({"x": 1}, end_on_stop=False), flush=True)
        checkpoint.save({"x": 2})
        print("not reached", flush=True)
        """
    )
    run = start(script, tmp_path / "ckpt")
    output = run.communicate(timeout=30)[0]
    assert run.returncode == checkpoint.STOPPED_EXIT_CODE, output
    assert [line for line in output.splitlines() if not line.startswith("[gpuslice] stop signal")] == [
        "callback ran",
        "stop requested True",
        "saved True",
        "[gpuslice] checkpoint saved; stopping as asked",
    ], output
    assert "not reached" not in output
    # the last save is what the next run loads
    loaded = start("from spawner import checkpoint\nprint(checkpoint.load())\n", tmp_path / "ckpt")
    assert loaded.communicate(timeout=30)[0].splitlines()[-1] == "{'x': 2}"


def test_every_job_with_a_files_directory_gets_a_checkpoint_directory_inside_it():
    spec = ExecutionSpec(
        "job-1-run-1", "ada", ["true"], "/tmp", {JOB_FILES_VARIABLE: "/srv/jobs/job-1"}, [], 60
    )
    environment = execution_environment(spec)
    assert environment[checkpoint.CHECKPOINT_VARIABLE] == f"/srv/jobs/job-1/{CHECKPOINT_DIR}"
    bare = ExecutionSpec("job-2-run-1", "ada", ["true"], "/tmp", {}, [], 60)
    assert checkpoint.CHECKPOINT_VARIABLE not in execution_environment(bare)


def test_checkpoints_of_jobs_ended_past_the_retention_time_are_removed_and_no_others(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    ledger.create_schema()
    store = JobStore(ledger)
    jobs = JobService(store, None, None, scripts_dir=str(tmp_path / "job-scripts"))
    now = time.time()

    def job(name: str, states: list[str], ended_ago: float | None) -> str:
        record = store.submit(JobSpec(owner="ada", group=None, name=name, payload="print(1)\n", workdir=""))
        for state in states:
            ended = {} if ended_ago is None or state == "running" else {"now": now - ended_ago}
            store.transition(record.id, state, f"to {state}", **ended)
        folder = jobs.job_files_dir(record.id) / CHECKPOINT_DIR
        folder.mkdir(parents=True)
        (folder / checkpoint.STATE_FILE).write_bytes(b"state")
        return record.id

    old = job("old", ["running", "succeeded"], ended_ago=3 * 3600)
    old_cancelled = job("old, cancelled", ["cancelled"], ended_ago=3 * 3600)
    recent = job("recent", ["running", "failed"], ended_ago=600)
    running = job("still running", ["running"], ended_ago=None)
    # A link the job left where its checkpoint was is removed, not followed.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("not the job's")
    linked = job("linked", ["running", "succeeded"], ended_ago=3 * 3600)
    target = jobs.job_files_dir(linked) / CHECKPOINT_DIR
    for item in target.iterdir():
        item.unlink()
    target.rmdir()
    target.symlink_to(outside)

    retention = CheckpointRetention(retention_seconds=3600)
    removed = asyncio.run(retention.sweep(jobs, now=now))
    assert sorted(removed) == sorted([old, old_cancelled, linked])
    for job_id in (old, old_cancelled, linked):
        assert not os.path.lexists(jobs.job_files_dir(job_id) / CHECKPOINT_DIR)
        assert jobs.job_files_dir(job_id).is_dir()  # results stay; only the checkpoint goes
    for job_id in (recent, running):
        assert (jobs.job_files_dir(job_id) / CHECKPOINT_DIR / checkpoint.STATE_FILE).read_bytes() == b"state"
    assert (outside / "keep").read_text() == "not the job's"
    assert asyncio.run(retention.sweep(jobs, now=now)) == []  # nothing left to remove
    ledger.close()
