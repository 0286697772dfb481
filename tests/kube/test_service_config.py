"""How the service is configured for Kubernetes: which executor runs batch jobs, where it keeps
what outlives a run, and how a cluster it cannot read stops it. No cluster needed."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from harness import REPO_ROOT, free_port
from traitlets import TraitError
from traitlets.config import Config

from spawner.service.app import GPUSliceService
from spawner.service.executor import LocalExecutor
from spawner.service.executor.kube import KubeJobExecutor, node_affinity, placed_node

KUBE_EXECUTOR = "spawner.service.executor.kube.KubeJobExecutor"


def job_service(tmp_path, monkeypatch, config: Config):
    monkeypatch.setenv("GPUSLICE_STATE_DIR", str(tmp_path / "state"))
    config.GPUSliceService.ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    config.GPUSliceService.profiles_dir = str(REPO_ROOT / "profiles")
    config.Inventory.source = "simulated"
    service = GPUSliceService(config=config)
    service.initialize([])
    allocator = asyncio.run(service.prepare_allocator())
    try:
        return service.make_job_service(allocator).executor
    finally:
        allocator.ledger.close()


def test_the_default_executor_runs_local_processes_under_the_state_dir(tmp_path, monkeypatch):
    executor = job_service(tmp_path, monkeypatch, Config())
    assert type(executor) is LocalExecutor
    assert executor.jobs_dir == str(tmp_path / "state" / "jobs")


def test_the_executor_class_names_the_kubernetes_job_executor(tmp_path, monkeypatch):
    config = Config()
    config.GPUSliceService.executor_class = KUBE_EXECUTOR
    config.KubeJobExecutor.namespace = "lab"
    executor = job_service(tmp_path, monkeypatch, config)
    assert type(executor) is KubeJobExecutor
    assert executor.namespace == "lab"
    # What outlives a run goes under the state dir; the pools are the service's own profiles.
    assert executor.logs_dir == str(tmp_path / "state" / "kube-job-logs")
    assert executor.profiles_dir == str(REPO_ROOT / "profiles")


def test_the_executors_own_settings_win(tmp_path, monkeypatch):
    config = Config()
    config.GPUSliceService.executor_class = KUBE_EXECUTOR
    config.KubeJobExecutor.logs_dir = str(tmp_path / "logs")
    config.KubeJobExecutor.profiles_dir = str(tmp_path / "k8s-profiles")
    config.LocalExecutor.jobs_dir = str(tmp_path / "unused")
    executor = job_service(tmp_path, monkeypatch, config)
    assert (executor.logs_dir, executor.profiles_dir) == (
        str(tmp_path / "logs"),
        str(tmp_path / "k8s-profiles"),
    )


def test_an_executor_class_that_is_no_executor_is_refused():
    with pytest.raises(TraitError, match="Executor"):
        GPUSliceService(executor_class="spawner.service.jobs.JobService")


def test_a_run_is_pinned_to_the_node_of_its_cluster_gpus():
    assert placed_node(["GPU-kube-node-a-0", "GPU-kube-node-a-3"]) == "node-a"
    assert placed_node([]) is None  # a CPU job goes wherever the scheduler puts it
    assert placed_node(["GPU-5c1f0e2a-0000"]) is None  # not a cluster's GPU
    assert placed_node(["GPU-kube-node-a-0", "GPU-kube-node-b-0"]) is None
    terms = node_affinity("node-a")["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-a"]}]}
    ]


def test_a_cluster_the_service_cannot_read_stops_it_saying_so(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    port = free_port()  # nothing listens there
    kubeconfig.write_text(
        f"""
apiVersion: v1
kind: Config
clusters: [{{name: lab, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: admin, user: {{token: not-a-token}}}}]
contexts: [{{name: lab, context: {{cluster: lab, user: admin}}}}]
current-context: lab
"""
    )
    command = [
        sys.executable,
        "-m",
        "spawner.service",
        f"--ledger-url=sqlite:///{tmp_path / 'ledger.sqlite'}",
        "--Inventory.source=kubernetes",
        f"--Inventory.kubeconfig={kubeconfig}",
        f"--GPUSliceService.service_url=http://127.0.0.1:{free_port()}",
    ]
    finished = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 1, finished.stderr
    assert "gpuslice service cannot start" in finished.stderr
    assert (
        f"the nodes of the Kubernetes cluster at http://127.0.0.1:{port} could not be listed"
        in finished.stderr
    )
