"""The ``gpuslice jobs`` command and the metrics, against the real service under a real hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness.hub import SERVICE_PREFIX
from harness.service_hubs import start_job_hub

pytestmark = pytest.mark.slow

GPUSLICE = str(Path(sys.executable).with_name("gpuslice"))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = start_job_hub(tmp_path_factory.mktemp("jobs-cli-hub"))
    yield hub
    hub.stop()


def gpuslice(hub, user: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The console script as a user runs it in their server: token and service URL in the env."""
    env = {
        **os.environ,
        "JUPYTERHUB_API_TOKEN": hub.token_for(user),
        "GPUSLICE_SERVICE_URL": hub.url + SERVICE_PREFIX,
    }
    return subprocess.run([GPUSLICE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_submit_wait_streams_the_log_and_list_and_logs_show_the_job(hub, tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print('epoch 1 loss 0.5')\nprint('epoch 2 loss 0.25')\n")
    done = gpuslice(
        hub, "alice", "jobs", "submit", "train.py", "--gpus", "1", "--time", "5m", "--wait", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "epoch 2 loss 0.25" in done.stdout
    submitted = gpuslice(hub, "alice", "jobs", "submit", "train.py", "--json", cwd=tmp_path)
    job = json.loads(submitted.stdout)
    assert job["id"].startswith("job-") and job["provenance"]["file"] == str(script)
    listing = gpuslice(hub, "alice", "jobs", "list", cwd=tmp_path)
    assert job["id"] in listing.stdout and listing.stdout.count("train.py") == 2
    logs = gpuslice(hub, "alice", "jobs", "logs", job["id"], "-f", cwd=tmp_path)
    assert "epoch 1 loss 0.5" in logs.stdout


def test_refusals_are_the_services_sentence_not_a_traceback(hub, tmp_path):
    (tmp_path / "big.py").write_text("print('x')\n")
    refused = gpuslice(hub, "alice", "jobs", "submit", "big.py", "--gpus", "16", cwd=tmp_path)
    assert refused.returncode == 1
    assert "no node has 16 GPUs" in refused.stderr and "Traceback" not in refused.stderr
    missing = gpuslice(hub, "bob", "jobs", "cancel", "job-000000000000", cwd=tmp_path)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


def test_metrics_are_for_admins_and_count_jobs(hub, tmp_path):
    (tmp_path / "ok.py").write_text("print('ok')\n")
    assert gpuslice(hub, "alice", "jobs", "submit", "ok.py", "--wait", cwd=tmp_path).returncode == 0
    assert hub.as_user("bob").get(hub.api + "metrics", timeout=10).status_code == 403
    metrics = hub.as_user("dana").get(hub.api + "metrics", timeout=10)  # dana is a hub admin
    assert metrics.status_code == 200
    text = metrics.text
    assert 'gpuslice_jobs_finished_total{group="researchers",state="succeeded"}' in text
    assert 'gpuslice_queue_wait_seconds_count{group="researchers",priority="normal"}' in text
    assert 'gpuslice_gpus{pool="train"} 1.0' in text
