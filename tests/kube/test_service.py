"""The running service in Kubernetes mode, on the real control plane.

A real hub starts the gpuslice service as it would in a cluster: batch jobs run as Kubernetes Jobs
(``--GPUSliceService.executor_class=...KubeJobExecutor``) and the GPUs are the cluster's nodes
(``--Inventory.source=kubernetes``), followed by a watch. Only the nodes this module creates (a
label of its own, ``Inventory.kube_node_labels``) are the service's, so the other tests' nodes
never take its jobs. kwok runs no container: a test ends a pod's "process" with the
``gpuslice.test/exit-code`` annotation (``kwok_stages.yaml``).
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from harness.jobs import SLEEPS, get_job, submit, wait_for, wait_for_log, wait_until
from harness.service_hubs import JOB_SERVICE_ARGS, TEST_QUOTAS, service_hub, started

from spawner.enforce.kube_objects import JOB_ID_LABEL, label_value
from spawner.inventory import Inventory
from spawner.service.reconcile import node_gone_reason

from .conftest import gpu_node, make_node
from .control_plane import JOB_LOG_LINES
from .test_control_plane import api

pytestmark = pytest.mark.slow
NODE_LABEL = "gpuslice.test/service"
JOB_WAIT_S = 90


def service_node(name: str, tag: str, gpus: int = 8) -> dict:
    """A kwok training node with ``gpus`` A100s, one of this module's service's (``tag``)."""
    node = gpu_node(name, "train")
    node["metadata"]["labels"][NODE_LABEL] = tag
    node["metadata"]["labels"]["nvidia.com/gpu.count"] = str(gpus)
    for resources in (node["status"]["capacity"], node["status"]["allocatable"]):
        resources["nvidia.com/gpu"] = str(gpus)
    return node


def run_async(coroutine):
    return asyncio.run(coroutine)


async def create_node(kubeconfig: str, node: dict) -> None:
    async with await api(kubeconfig) as api_client:
        from kubernetes_asyncio import client

        await make_node(client.CoreV1Api(api_client), node)


async def delete_node(kubeconfig: str, name: str) -> None:
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    async with await api(kubeconfig) as api_client:
        try:
            await client.CoreV1Api(api_client).delete_node(name)
        except ApiException as error:
            if error.status != 404:
                raise


async def job_pods(kubeconfig: str, run_id: str) -> list[dict]:
    """The pods of a job's run (``<job id>-<attempt>``), found by the label the executor sets."""
    from kubernetes_asyncio import client

    async with await api(kubeconfig) as api_client:
        response = await client.CoreV1Api(api_client).list_namespaced_pod(
            "default", label_selector=f"{JOB_ID_LABEL}={label_value(run_id)}", _preload_content=False
        )
        return (await response.json())["items"]


async def end_process(kubeconfig: str, pod: dict, exit_code: int) -> None:
    from kubernetes_asyncio import client

    async with await api(kubeconfig) as api_client:
        patch = {"metadata": {"annotations": {"gpuslice.test/exit-code": str(exit_code)}}}
        await client.CoreV1Api(api_client).patch_namespaced_pod(pod["metadata"]["name"], "default", patch)


def running_pod(hub, kubeconfig: str, run_id: str) -> dict:
    def check():
        pods = run_async(job_pods(kubeconfig, run_id))
        return pods[0] if pods and pods[0]["status"].get("phase") == "Running" else None

    return wait_until(hub, f"the pod of run {run_id} running", check, timeout=JOB_WAIT_S)


@pytest.fixture(scope="module")
def tag(cluster):
    """This module's node label value; its nodes are deleted at the end."""
    value = uuid.uuid4().hex[:8]
    yield value
    for name in (f"svc-a-{value}", f"svc-b-{value}"):
        run_async(delete_node(cluster, name))


def start_kube_hub(
    cluster: str, tag: str, state_dir, quotas: str = TEST_QUOTAS, extra_args=(), payload_from_service=False
):
    """A started hub whose service runs jobs as Kubernetes Jobs on the nodes labelled ``tag``;
    with ``payload_from_service``, cell jobs' runners fetch their payloads from the service."""
    args = [
        *JOB_SERVICE_ARGS,
        f"--Inventory.kubeconfig={cluster}",
        f"--Inventory.kube_node_labels={NODE_LABEL}={tag}",
        "--GPUSliceService.executor_class=spawner.service.executor.kube.KubeJobExecutor",
        "--GPUSliceService.monitor_gpus=False",
        f"--KubeJobExecutor.kubeconfig={cluster}",
        "--KubeJobExecutor.namespace=default",
        "--KubeJobExecutor.image=registry.invalid/gpuslice-trainer:test",
        "--KubeJobExecutor.mount_home=False",
        "--KubeJobExecutor.grace_seconds=2",
        *extra_args,
    ]
    hub = service_hub(state_dir, quotas=quotas, service_args=args)
    hub.env["GPUSLICE_INVENTORY"] = "kubernetes"  # hub_config.py's --Inventory.source
    if payload_from_service:  # the service's URL through the hub's proxy, known once the hub is made
        overlay = json.loads(hub.env["GPUSLICE_TEST_HUB"])
        overlay["service_args"].append(f"--KubeJobExecutor.payload_service_url={hub.url}/services/gpuslice/")
        hub.env["GPUSLICE_TEST_HUB"] = json.dumps(overlay)
    return started(hub)


@pytest.fixture(scope="module")
def kube_hub(cluster, tag, tmp_path_factory):
    """A hub whose service runs jobs as Kubernetes Jobs on the GPUs of node ``svc-a-<tag>``."""
    run_async(create_node(cluster, service_node(f"svc-a-{tag}", tag)))
    hub = start_kube_hub(cluster, tag, tmp_path_factory.mktemp("kube-hub"))
    yield hub
    hub.stop()


def gpus_by_node(hub) -> dict[str, int]:
    listed = hub.client(hub.service_token).get(hub.api + "gpus", timeout=30).json()["gpus"]
    counts: dict[str, int] = {}
    for gpu in listed:
        counts[gpu["node"]] = counts.get(gpu["node"], 0) + 1
    return counts


def test_the_inventory_is_the_clusters_nodes(kube_hub, tag):
    assert gpus_by_node(kube_hub) == {f"svc-a-{tag}": 8}
    listed = kube_hub.client(kube_hub.service_token).get(kube_hub.api + "gpus", timeout=30).json()["gpus"]
    assert {gpu["model"] for gpu in listed} == {"A100-80GB"}
    assert {tuple(gpu["pools"]) for gpu in listed} == {("train",)}
    assert not any(gpu["simulated"] for gpu in listed)


def test_a_batch_job_runs_as_a_kubernetes_job_on_the_node_the_allocator_chose(kube_hub, cluster, tag):
    alice = kube_hub.as_user("alice")
    job = submit(alice, kube_hub, SLEEPS, gpus=2)
    running = wait_for(alice, kube_hub, job["id"], ["running"], timeout=JOB_WAIT_S)
    assert running["node"] == f"svc-a-{tag}"
    run_id = running["lease_id"]
    pod = running_pod(kube_hub, cluster, run_id)
    # The real scheduler bound it where the ledger placed it, with the GPUs it was granted.
    assert pod["spec"]["nodeName"] == f"svc-a-{tag}"
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    # The log comes from the API (kwok serves every container's log).
    assert JOB_LOG_LINES.splitlines()[0] in wait_for_log(alice, kube_hub, job["id"], "epoch 2")

    run_async(end_process(cluster, pod, 0))
    ended = wait_for(alice, kube_hub, job["id"], ["succeeded", "failed"], timeout=JOB_WAIT_S)
    assert (ended["state"], ended["exit_code"]) == ("succeeded", 0), ended
    lease = kube_hub.client(kube_hub.service_token).get(kube_hub.api + f"leases/{run_id}", timeout=30)
    assert lease.json()["lease"]["released_at"] is not None


def test_cancel_deletes_the_jobs_pod(kube_hub, cluster):
    alice = kube_hub.as_user("alice")
    job = submit(alice, kube_hub, SLEEPS)
    run_id = wait_for(alice, kube_hub, job["id"], ["running"], timeout=JOB_WAIT_S)["lease_id"]
    running_pod(kube_hub, cluster, run_id)
    assert alice.post(kube_hub.api + f"jobs/{job['id']}/cancel", timeout=60).status_code == 200
    wait_until(
        kube_hub,
        "the cancelled job's pod deleted",
        lambda: not run_async(job_pods(cluster, run_id)),
        JOB_WAIT_S,
    )
    assert get_job(alice, kube_hub, job["id"])["job"]["state"] == "cancelled"


def test_the_inventory_reads_the_same_nodes_outside_the_service(kube_hub, cluster, tag):
    inventory = Inventory(source="kubernetes", kubeconfig=cluster, kube_node_labels={NODE_LABEL: tag})
    (node,) = inventory.discover()
    assert (node.name, len(node.gpus), node.gpus[0].pools) == (f"svc-a-{tag}", 8, frozenset({"train"}))


async def set_unschedulable(kubeconfig: str, name: str, unschedulable: bool) -> None:
    from kubernetes_asyncio import client

    async with await api(kubeconfig) as api_client:
        await client.CoreV1Api(api_client).patch_node(name, {"spec": {"unschedulable": unschedulable}})


def test_a_cordoned_node_takes_no_new_work_and_what_runs_there_goes_on(kube_hub, cluster, tag):
    node = f"svc-a-{tag}"
    alice = kube_hub.as_user("alice")
    job = submit(alice, kube_hub, SLEEPS)
    run_id = wait_for(alice, kube_hub, job["id"], ["running"], timeout=JOB_WAIT_S)["lease_id"]
    pod = running_pod(kube_hub, cluster, run_id)
    run_async(set_unschedulable(cluster, node, True))
    try:
        wait_until(kube_hub, "the cordoned node's GPUs left out", lambda: gpus_by_node(kube_hub) == {})
        # No new work goes there (the service's only node: a new job is refused outright) ...
        body = {"name": "test job", "script": SLEEPS, "gpus": 1, "time_limit": "10m"}
        refused = alice.post(kube_hub.api + "jobs", json=body, timeout=30)
        assert refused.status_code == 400 and "no node has 1 GPUs" in refused.json()["message"], refused.text
        # ... while the job there goes on, holding its lease.
        assert get_job(alice, kube_hub, job["id"])["job"]["state"] == "running"
        assert run_async(job_pods(cluster, run_id))
        lease = kube_hub.client(kube_hub.service_token).get(kube_hub.api + f"leases/{run_id}", timeout=30)
        assert lease.json()["lease"]["released_at"] is None
    finally:
        run_async(set_unschedulable(cluster, node, False))
    wait_until(kube_hub, "the node's GPUs back", lambda: gpus_by_node(kube_hub) == {node: 8})
    run_async(end_process(cluster, pod, 0))
    assert (
        wait_for(alice, kube_hub, job["id"], ["succeeded", "failed"], timeout=JOB_WAIT_S)["state"]
        == "succeeded"
    )


def test_a_deleted_node_fails_its_jobs_and_frees_its_leases_and_a_new_node_joins(kube_hub, cluster, tag):
    node = f"svc-a-{tag}"
    alice = kube_hub.as_user("alice")
    job = submit(alice, kube_hub, SLEEPS)
    run_id = wait_for(alice, kube_hub, job["id"], ["running"], timeout=JOB_WAIT_S)["lease_id"]
    running_pod(kube_hub, cluster, run_id)
    service = kube_hub.client(kube_hub.service_token)
    body = {
        "lease_id": f"slice-{tag}",
        "user": "carol",
        "holder": "carol/",
        "request": {"gpus": 1, "pool": "train"},
    }
    held = service.post(kube_hub.api + "leases", json=body, timeout=30)
    assert held.status_code == 201, held.text
    assert held.json()["lease"]["node"] == node

    run_async(delete_node(cluster, node))
    failed = wait_for(alice, kube_hub, job["id"], ["failed", "succeeded", "cancelled"], timeout=JOB_WAIT_S)
    assert (failed["state"], failed["reason"]) == ("failed", node_gone_reason(node)), failed
    for lease_id in (run_id, body["lease_id"]):
        lease = service.get(kube_hub.api + f"leases/{lease_id}", timeout=30).json()["lease"]
        assert lease["released_at"] is not None, lease
    assert gpus_by_node(kube_hub) == {}

    # A node added to the cluster joins the inventory through the watch, and takes new work.
    run_async(create_node(cluster, service_node(f"svc-b-{tag}", tag)))
    wait_until(kube_hub, "the new node's GPUs listed", lambda: gpus_by_node(kube_hub) == {f"svc-b-{tag}": 8})
    again = submit(alice, kube_hub, SLEEPS)
    assert wait_for(alice, kube_hub, again["id"], ["running"], timeout=JOB_WAIT_S)["node"] == f"svc-b-{tag}"
