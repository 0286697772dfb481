"""The cluster of the control-plane tests: the one KUBECONFIG names, else one started here.

``cluster`` (session) is a kubeconfig path. Without KUBECONFIG it starts the control plane of
:mod:`.control_plane` (the binaries ``build_control_plane.sh`` built) and creates its fake GPU
nodes; where neither is possible the tests that need a cluster are skipped, saying why.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from .control_plane import KWOK_NODE_ANNOTATION, control_plane, missing_reason

DEV_NODE = "gpuslice-dev-0"
TRAIN_NODES = ("gpuslice-train-0", "gpuslice-train-1")
POOL_LABEL = "gpuslice.io/pool"


def gpu_node(name: str, pool: str) -> dict:
    """A kwok node with 8 A100 80 GB cards as NVIDIA's device plugin and feature discovery show
    them: whole GPUs, MIG 1g.10gb instances (mixed strategy) and time-sliced shares."""
    resources = {
        "cpu": "64",
        "memory": "512Gi",
        "pods": "110",
        "nvidia.com/gpu": "8",
        "nvidia.com/mig-1g.10gb": "56",
        "nvidia.com/mig-2g.20gb": "24",
        "nvidia.com/gpu.shared": "64",
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                POOL_LABEL: pool,
                "nvidia.com/gpu.count": "8",
                "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
                "nvidia.com/gpu.memory": "81920",
                "nvidia.com/mig.capable": "true",
            },
        },
        "spec": {},
        "status": {"capacity": resources, "allocatable": resources},
    }


async def make_node(core, node: dict) -> None:
    """Register ``node`` as its kubelet would: the object, then its status and its readiness.

    Status is the kubelet's (here kwok's) to write: a create keeps only the spec. The API server
    taints every new node ``node.kubernetes.io/not-ready`` until the node lifecycle controller sees
    it Ready; that controller is off here (kwok's nodes send no lease heartbeats, so it would evict
    their pods), so the taint is lifted as the controller would lift it.
    """
    name = node["metadata"]["name"]
    await core.create_node(node)
    await core.patch_node_status(name, {"status": node["status"]})
    await core.patch_node(name, {"spec": {"taints": None}})


async def create_nodes(kubeconfig: str, nodes: list[dict]) -> None:
    from kubernetes_asyncio import client, config
    from kubernetes_asyncio.client.exceptions import ApiException

    configuration = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        core = client.CoreV1Api(api)
        for node in nodes:
            try:
                await make_node(core, node)
            except ApiException as error:
                if error.status != 409:
                    raise
        for _ in range(200):
            listed = await core.list_node(label_selector="type=kwok")
            ready = {
                item.metadata.name
                for item in listed.items
                if any(c.type == "Ready" and c.status == "True" for c in item.status.conditions or [])
                and (item.status.allocatable or {}).get("nvidia.com/gpu") == "8"
            }
            if {node["metadata"]["name"] for node in nodes} <= ready:
                return
            await asyncio.sleep(0.3)
        raise RuntimeError(f"kwok did not make the nodes Ready: {sorted(ready)}")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> str:
    """A kubeconfig of a cluster with the fake GPU nodes (dev and train pools)."""
    nodes = [gpu_node(DEV_NODE, "dev"), *(gpu_node(name, "train") for name in TRAIN_NODES)]
    if os.environ.get("KUBECONFIG"):
        kubeconfig = os.environ["KUBECONFIG"]
        asyncio.run(create_nodes(kubeconfig, nodes))
        yield kubeconfig
        return
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    workdir = Path(tmp_path_factory.mktemp("control-plane"))
    with control_plane(workdir) as plane:
        asyncio.run(create_nodes(str(plane.kubeconfig), nodes))
        plane.check_running()
        yield str(plane.kubeconfig)
