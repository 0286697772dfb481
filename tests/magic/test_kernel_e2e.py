"""%%submit end to end: a real kernel in a server our spawner started, on a real hub with the real service.

The hub is ``hub_config.py`` as ``make run`` starts it, with two simulated GPUs: index 0 for
notebook slices, index 1 for the training queue. A user logs in, their server starts on a GPU
profile, a kernel starts through the server's REST API, and the test drives that kernel with
``jupyter_client`` exactly as a notebook frontend would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import HubProcess
from integration.kernels import evaluate, run, spawn_server, start_kernel
from jupyter_client import BlockingKernelClient

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILE = "a100-1-8"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Notebook:
    hub: HubProcess
    user: str
    home: Path
    kernel: BlockingKernelClient


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    state = tmp_path_factory.mktemp("magic-hub")
    hub = HubProcess(
        state,
        extra_env={
            "GPUSLICE_INVENTORY": "simulated",
            "GPUSLICE_SIMULATED_GPUS": "2",
            "GPUSLICE_TRAIN_GPUS": "1",
            "GPUSLICE_HTTP_TIMEOUT": "150",
        },
    )
    user = f"ada{uuid.uuid4().hex[:8]}"
    home = Path(f"/tmp/{user}")  # SimpleLocalProcessSpawner's home, and the server's working directory
    kernel = None
    hub.start(timeout=120)
    try:
        session = spawn_server(hub, user, PROFILE)
        kernel = start_kernel(hub, session, user, home)
        yield Notebook(hub, user, home, kernel)
    finally:
        if kernel is not None:
            kernel.stop_channels()
        hub.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_a_fresh_kernel_of_a_spawned_server_has_the_magics_without_load_ext(notebook):
    magics = "get_ipython().magics_manager.magics"
    assert (
        evaluate(notebook.kernel, f"'submit' in {magics}['cell'], 'submit' in {magics}['line']")
        == "(True, True)"
    )
    assert (
        evaluate(notebook.kernel, f"'jobs' in {magics}['line'], 'job' in {magics}['line']") == "(True, True)"
    )


def test_a_cell_using_an_import_a_function_an_array_and_a_local_module_runs_and_comes_back(notebook):
    kernel = notebook.kernel
    (notebook.home / "e2e_helpers.py").write_text("def offset():\n    return 100\n")
    setup = run(
        kernel,
        "import numpy as np\nimport e2e_helpers\ndef scale(v):\n    return v * 2\ndata = np.arange(5)\n",
    )
    assert not setup.errors, setup.text
    submitted = run(
        kernel,
        textwrap.dedent(
            """\
            %%submit --gpus 1 --wait --name e2e
            import os
            scaled = scale(data) + e2e_helpers.offset()
            total = int(np.sum(scaled))
            gpus = os.environ["CUDA_VISIBLE_DEVICES"]
            print("total is", total)
            """
        ),
    )
    assert not submitted.errors, str(submitted)
    manifest = submitted.stdout.splitlines()[0]
    assert manifest.startswith("%submit 'e2e': ")
    for part in ("imports e2e_helpers, numpy as np", "by value scale (", "values data (numpy.ndarray, "):
        assert part in manifest, manifest
    assert "local modules e2e_helpers.py (" in manifest and "payload " in manifest
    job_id = submitted.job_id()
    assert "total is 520" in submitted.stdout  # the log, streamed into the cell
    assert f"fetched from {job_id}: scaled (ndarray), total (int), gpus (str)" in submitted.stdout
    assert evaluate(kernel, "scaled.tolist(), total") == "([100, 102, 104, 106, 108], 520)"
    assert evaluate(kernel, "gpus.startswith('GPU-')") == "True"

    run(kernel, "del scaled, gpus\ntotal = -1")
    fetched = run(kernel, f"%job fetch {job_id}")
    assert f"fetched from {job_id}: scaled (ndarray), total (int), gpus (str)" in fetched.stdout
    assert f"warning: total already exists here (int); replacing it with the value from job {job_id}" in (
        fetched.stderr
    )
    assert evaluate(kernel, "scaled.tolist(), total, gpus.startswith('GPU-')") == (
        "([100, 102, 104, 106, 108], 520, True)"
    )
    provenance = evaluate(
        kernel,
        f"(lambda p: (p['cell'].startswith('%%submit'), p['workdir'], p['python'] is not None, "
        f"p['packages_hash'].startswith('sha256:'), any(x.startswith('numpy==') for x in p['packages']))"
        f")(__import__('spawner.client').client.GPUSliceClient().job('{job_id}')['job']['provenance'])",
    )
    assert provenance == f"(True, '{notebook.home}', True, True, True)"


def test_a_job_runs_without_blocking_the_kernel_its_status_updates_in_place_and_logs_stream(notebook):
    kernel = notebook.kernel
    submitted = run(
        kernel,
        "%%submit --gpus 1 --name steps\nimport time\nfor step in range(3):\n"
        "    print('step', step, flush=True)\n    time.sleep(1)\nfinal = step\n",
    )
    job_id = submitted.job_id()
    assert any(line.startswith(f"{job_id} · queued") for line in submitted.displays), submitted.displays
    assert "JobHandle" not in submitted.text and f"job {job_id}: .status()" in submitted.text
    # The cell has returned; the status line goes on updating in place until the job ends.
    updates, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline and not any("succeeded" in text for text in updates):
        try:
            message = kernel.get_iopub_msg(timeout=1)
        except Exception:
            continue
        if message["msg_type"] == "update_display_data":
            updates.append(message["content"]["data"]["text/plain"])
    assert any(f"{job_id} · running · elapsed" in text for text in updates), updates
    assert any(
        text.startswith(f"{job_id} · succeeded") and f"%job fetch {job_id}" in text for text in updates
    )
    assert any("last: step" in text for text in updates), updates

    logs = run(kernel, f"%job logs {job_id}")
    assert [line for line in logs.stdout.splitlines() if line.startswith("step")] == [
        "step 0",
        "step 1",
        "step 2",
    ]
    assert not run(kernel, "handle = _").errors  # what %%submit returned: the job's handle
    assert evaluate(kernel, "handle.id, handle.status(), handle.result()") == (
        f"('{job_id}', 'succeeded', {{'step': 2, 'final': 2}})"
    )
    assert "step 2" in evaluate(kernel, "handle.logs()")
    listing = run(kernel, "%jobs")
    assert (
        "id" in listing.displays[0] and job_id in listing.displays[0] and "succeeded" in listing.displays[0]
    )


def test_a_script_runs_from_the_working_directory_with_its_arguments(notebook):
    (notebook.home / "e2e_train.py").write_text(
        "import sys\nimport e2e_helpers\n"
        "epochs = int(sys.argv[1]) + e2e_helpers.offset()\nprint('epochs', epochs)\n"
    )
    done = run(notebook.kernel, "%submit --gpus 0 --wait --out epochs e2e_train.py 3")
    assert not done.errors, done.text
    assert "epochs 103" in done.stdout and "local modules e2e_helpers.py" in done.stdout
    assert evaluate(notebook.kernel, "epochs") == "103"


def test_cancel_stops_a_long_job(notebook):
    kernel = notebook.kernel
    submitted = run(
        kernel, "%%submit --gpus 1\nimport time\nprint('sleeping', flush=True)\ntime.sleep(600)\n"
    )
    job_id = submitted.job_id()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if "sleeping" in run(kernel, f"%job logs {job_id}").stdout:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"{job_id} never started:\n{notebook.hub.log()}")
    cancelled = run(kernel, f"%job cancel {job_id}")
    assert cancelled.stdout.strip() == f"{job_id} cancelled", cancelled.text
    assert run(kernel, f"%job status {job_id}").stdout.strip() == "cancelled"
    refused = run(kernel, f"%job fetch {job_id}")
    refused.assert_quiet_refusal(
        f"job {job_id} cancelled (cancelled by {notebook.user}) without returning values"
    )


def test_a_failing_cell_under_wait_raises_the_remote_exception_in_the_notebook(notebook):
    """A notebook run top to bottom stops at a failed training cell, as it would have run here."""
    failed = run(
        notebook.kernel,
        "%%submit --gpus 1 --wait\ndef explode(x):\n    return x / 0\n\nvalue = explode(1)\n",
    )
    job_id = failed.job_id()
    assert [error["ename"] for error in failed.errors] == ["ZeroDivisionError"], failed.text
    assert failed.errors[0]["evalue"] == "division by zero"
    shown = ANSI.sub("", "\n".join(failed.errors[0]["traceback"]))
    # The cause, shown above the exception: the job, and the job's own frames.
    assert f"RemoteJobError: job {job_id} raised ZeroDivisionError: division by zero" in shown, shown
    assert "Remote traceback (the job's own frames):" in shown
    assert 'File "<cell>", line 5, in <module>' in shown and 'File "<cell>", line 3, in explode' in shown
    assert f"raised by job {job_id}" in shown
    assert 'File "<cell>", line 3, in explode' in failed.stdout  # the log, streamed before the error
    # %job fetch stays a quiet look at the job: the sentence and the traceback, no error.
    again = run(notebook.kernel, f"%job fetch {job_id}")
    assert f"job {job_id} raised ZeroDivisionError" in again.stderr and not again.errors


def test_an_exception_class_the_notebook_does_not_have_raises_remote_job_error(notebook):
    failed = run(
        notebook.kernel,
        "%%submit --gpus 0 --wait\nclass DivergedError(Exception):\n    pass\n\n"
        "raise DivergedError('loss is nan at step 7')\n",
    )
    job_id = failed.job_id()
    assert [error["ename"] for error in failed.errors] == ["RemoteJobError"], failed.text
    assert failed.errors[0]["evalue"].startswith(
        f"job {job_id} raised DivergedError: loss is nan at step 7\nRemote traceback"
    )
    caught = run(
        notebook.kernel,
        "from spawner.magic import RemoteJobError\n"
        "try:\n"
        f"    __import__('spawner.magic').magic.JobHandle('{job_id}').wait()\n"
        "except RemoteJobError as error:\n"
        "    print(error.job_id, error.exit_code, error.error_type, 'line 5' in error.remote_traceback)\n",
    )
    assert caught.stdout.strip() == f"{job_id} 1 DivergedError True", caught.text


def test_an_exception_class_defined_in_the_notebook_comes_back_as_that_class(notebook):
    kernel = notebook.kernel
    assert not run(kernel, "class TrainingDiverged(Exception):\n    pass\n").errors
    failed = run(kernel, "%%submit --gpus 0 --wait\nraise TrainingDiverged('loss is nan', 7)\n")
    assert [error["ename"] for error in failed.errors] == ["TrainingDiverged"], failed.text
    caught = run(
        kernel,
        "try:\n"
        f"    __import__('spawner.magic').magic.JobHandle('{failed.job_id()}').result()\n"
        "except TrainingDiverged as error:\n"
        "    print(error.args, type(error.__cause__).__name__)\n",
    )
    assert caught.stdout.strip() == "('loss is nan', 7) RemoteJobError", caught.text


def test_wait_and_result_of_a_handle_raise_the_remote_exception_and_cancellation(notebook):
    kernel = notebook.kernel
    submitted = run(kernel, "%%submit --gpus 0\nepochs = int('ten')\n")
    job_id = submitted.job_id()
    assert not submitted.errors  # asynchronous: nothing is raised when the job fails later
    assert not run(kernel, "handle = _").errors
    waited = run(kernel, "handle.wait(timeout=120)")
    assert [error["ename"] for error in waited.errors] == ["ValueError"], waited.text
    result = run(kernel, "handle.result()")
    assert [error["ename"] for error in result.errors] == ["ValueError"], result.text
    assert evaluate(kernel, f"handle.id == '{job_id}'") == "True"

    long = run(kernel, "%%submit --gpus 0\nimport time\ntime.sleep(600)\n")
    assert not run(kernel, "long = _").errors
    run(kernel, f"%job cancel {long.job_id()}")
    cancelled = run(kernel, "long.wait(timeout=60)")
    assert [error["ename"] for error in cancelled.errors] == ["JobCancelled"], cancelled.text
    assert cancelled.errors[0]["evalue"] == (
        f"job {long.job_id()} was cancelled: cancelled by {notebook.user}"
    )


def test_refusals_are_one_clear_message_and_nothing_is_sent(notebook):
    kernel = notebook.kernel
    assert not run(
        kernel,
        "import threading\nbig = np.zeros(2_000_000)\nlock = threading.Lock()\nsink = open('sink.txt', 'w')",
    ).errors
    run(kernel, "%%submit\ntotal = big.sum()").assert_quiet_refusal(
        "%%submit: nothing was sent, because big (numpy.ndarray, 15.3 MiB) is over the 8 MiB limit",
        "Save it to a file",
    )
    run(kernel, "%%submit\nwith lock:\n    sink.write('x')").assert_quiet_refusal(
        "lock (_thread.lock, ",
        "sink (_io.TextIOWrapper, ",
        "cannot be pickled",
        "Create it inside the cell",
    )
    run(kernel, "%%submit --gpus 4\nx = 1").assert_quiet_refusal(
        "gpus: no node has 4 GPUs", "the largest training node has 1", "ask for 1 or fewer"
    )
    run(kernel, "%%submit --priority high\nx = 1").assert_quiet_refusal(
        f"priority: 'high' is for members of no group and admins, and user {notebook.user} is neither"
    )
    run(kernel, "%%submit --priority urgent\nx = 1").assert_quiet_refusal("give one of low, normal, high")
    # profiles/quotas.yaml gives every user 100 GPU-hours of batch jobs a week.
    run(kernel, "%%submit --time 200h\nx = 1").assert_quiet_refusal(
        f"time_limit: user {notebook.user} has 100 GPU-hours of batch jobs a week, and this job may take 200",
        "give a time limit of at most 100h",
    )


def test_the_example_notebook_runs_cell_by_cell_and_brings_its_values_back(notebook):
    """examples/submit.ipynb, the README's walk-through, as a person would run it: every code cell in
    order in the spawned server's kernel, with no error, ending with the job's values in the kernel."""
    example = json.loads((REPO_ROOT / "examples" / "submit.ipynb").read_text())
    cells = ["".join(cell["source"]) for cell in example["cells"] if cell["cell_type"] == "code"]
    assert any(cell.startswith("%%submit") for cell in cells)
    outputs = []
    for source in cells:
        done = run(notebook.kernel, source)
        outputs.append(done)
        assert not done.errors and done.reply["content"]["status"] == "ok", "\n---\n".join(map(str, outputs))
    assert outputs[2].job_id()  # the %%submit cell said which job it submitted
    weight = float(evaluate(notebook.kernel, "weight"))
    assert abs(weight - 3.0) < 0.1  # the job fitted y = 3x
    assert float(evaluate(notebook.kernel, "final_loss")) < 0.05


def test_the_checkpoint_example_runs_cell_by_cell_and_brings_its_values_back(notebook):
    """examples/checkpoint.ipynb as a person runs it: the loop saves through spawner.checkpoint in
    the job (its $GPUSLICE_CHECKPOINT_DIR) and its values come back. Its resuming after a real
    preemption is tested in test_checkpoint_preemption.py."""
    example = json.loads((REPO_ROOT / "examples" / "checkpoint.ipynb").read_text())
    cells = ["".join(cell["source"]) for cell in example["cells"] if cell["cell_type"] == "code"]
    outputs = [run(notebook.kernel, source) for source in cells]
    for done in outputs:
        assert not done.errors and done.reply["content"]["status"] == "ok", "\n---\n".join(map(str, outputs))
    assert "run 1 starts at step 0" in outputs[0].stdout
    assert outputs[1].stdout.strip() == "30 steps in 1 run(s), final loss 0.0424"


def test_with_the_service_down_submitting_says_so_and_goes_through_once_it_is_back(notebook):
    pid = int((notebook.hub.state_dir / "gpuslice.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    # The magic says why it waits and sends the cell again under the same idempotency key until
    # the hub has restarted the service (issue 10): the cell is queued, and only once.
    waited = run(notebook.kernel, "%%submit\nx = 1")
    assert "no answer from the service (the gpuslice service at " in waited.stderr
    assert "try again in a minute" in waited.stderr and "sending the cell again" in waited.stderr
    assert not waited.errors and "Traceback" not in waited.text, waited.text
    assert waited.stdout.count("submitted job-") == 1, waited.text
    listed = run(notebook.kernel, "%jobs")
    assert listed.text.count(waited.job_id()) == 1, listed.text
