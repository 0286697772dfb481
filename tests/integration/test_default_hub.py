"""The hub a new user meets: ``make run`` with no settings at all, both halves of the product.

Started exactly as ``make run`` starts it (only free ports and a state directory differ), on this
machine's GPUs or, without any, on the simulated demo GPUs, split as the case study splits a lab:
half sliced for notebooks, half for the training queue. A user logs in with the generated
password, starts the "1/8 A100" profile, and from a real kernel of that server sends a cell with
``%%submit --gpus 1`` and a script with ``gpuslice jobs submit --gpus 1``; both run and come back.
"""

from __future__ import annotations

import shutil
import textwrap
import uuid
from pathlib import Path

import pytest
from harness import HubProcess

from .kernels import evaluate, run, spawn_server, start_kernel

pytestmark = pytest.mark.slow

PROFILE = "a100-1-8"  # "PyTorch · 1/8 A100 (10 GB)" in the dropdown


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    hub = HubProcess.as_make_run(tmp_path_factory.mktemp("default-hub"))
    user = f"newcomer{uuid.uuid4().hex[:8]}"
    home = Path(f"/tmp/{user}")  # SimpleLocalProcessSpawner's home, and the server's working directory
    kernel = None
    hub.start(timeout=120)
    try:
        session = spawn_server(hub, user, PROFILE)
        kernel = start_kernel(hub, session, user, home)
        yield hub, user, home, kernel
    finally:
        if kernel is not None:
            kernel.stop_channels()
        hub.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_the_default_lab_has_dev_and_training_gpus_and_says_which_is_which(notebook):
    hub, _, _, kernel = notebook
    log = hub.log_path.read_text()
    assert "gpuslice quick start" in log
    pools_line = next(line for line in log.splitlines() if "GPU pools: " in line)
    assert "dev: " in pools_line and "train: " in pools_line, pools_line
    pools = evaluate(
        kernel,
        "sorted(tuple(gpu['pools']) for gpu in __import__('spawner.client').client.GPUSliceClient()"
        ".call('GET', 'gpus')['gpus'])",
    )
    dev, train = pools.count("('dev',)"), pools.count("('train',)")
    assert dev >= 1 and train >= 1 and dev >= train, pools


def test_the_servers_slice_variables_say_what_the_readme_says(notebook):
    _, _, _, kernel = notebook
    assert evaluate(kernel, "__import__('os').environ['GPUSLICE_MILLI_GPU']") == "125"
    assert evaluate(kernel, "__import__('os').environ['GPUSLICE_GPUS']") == "1"  # it sees one GPU
    assert evaluate(kernel, "__import__('os').environ['CUDA_VISIBLE_DEVICES'].startswith('GPU-')") == "True"


def test_a_submit_cell_runs_on_a_training_gpu_and_its_value_comes_back(notebook):
    _, _, _, kernel = notebook
    assert not run(kernel, "def double(x):\n    return 2 * x\nbase = 21\n").errors
    submitted = run(
        kernel,
        textwrap.dedent(
            """\
            %%submit --gpus 1 --wait --name newcomer-double
            import os
            answer = double(base)
            where = os.environ["CUDA_VISIBLE_DEVICES"]
            """
        ),
    )
    assert not submitted.errors, str(submitted)
    job_id = submitted.job_id()
    assert f"fetched from {job_id}: answer (int), where (str)" in submitted.stdout, submitted.text
    assert evaluate(kernel, "answer") == "42"
    assert evaluate(kernel, "where != __import__('os').environ['CUDA_VISIBLE_DEVICES']") == "True"
    job = evaluate(
        kernel,
        f"(lambda j: (j['state'], j['gpus'], j['pool']))"
        f"(__import__('spawner.client').client.GPUSliceClient().job('{job_id}')['job'])",
    )
    assert job == "('succeeded', 1, 'train')"


def test_gpuslice_jobs_submit_of_a_one_gpu_script_succeeds(notebook):
    _, _, home, kernel = notebook
    script = "import os\nprint('trained on', os.environ['CUDA_VISIBLE_DEVICES'])\n"
    (home / "newcomer_job.py").write_text(script)
    done = run(
        kernel,
        "import subprocess, sys, pathlib\n"
        "cli = pathlib.Path(sys.executable).with_name('gpuslice')\n"
        "done = subprocess.run([str(cli), 'jobs', 'submit', 'newcomer_job.py', '--gpus', '1', '--wait'],"
        " capture_output=True, text=True, timeout=240)\n"
        "print(done.returncode)\nprint(done.stdout)\nprint(done.stderr)\n",
        timeout=300,
    )
    assert not done.errors, done.text
    lines = done.stdout.splitlines()
    assert lines[0] == "0", done.stdout
    assert "trained on GPU-" in done.stdout
