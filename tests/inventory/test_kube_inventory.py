"""Kubernetes nodes: GPUs from v1 Node JSON and NVIDIA GPU feature-discovery labels."""

from __future__ import annotations

import copy
from decimal import Decimal

import pytest

from spawner.inventory import POOL_LABEL, SOURCE_LABEL, nodes_from_kube, parse_quantity

DGX_A100 = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {
        "name": "dgx-a100-01",
        "uid": "3c0d7f9e-52d5-4b7e-9a0c-4f1e2b3a4c5d",
        "resourceVersion": "918273",
        "creationTimestamp": "2024-03-11T09:12:44Z",
        "labels": {
            "beta.kubernetes.io/arch": "amd64",
            "kubernetes.io/hostname": "dgx-a100-01",
            "kubernetes.io/os": "linux",
            "node-role.kubernetes.io/worker": "",
            "feature.node.kubernetes.io/pci-10de.present": "true",
            "nvidia.com/cuda.driver.major": "550",
            "nvidia.com/gpu.count": "8",
            "nvidia.com/gpu.family": "ampere",
            "nvidia.com/gpu.machine": "DGXA100-920-23687-2530-000",
            "nvidia.com/gpu.memory": "81920",
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
            "nvidia.com/gpu.replicas": "1",
            "nvidia.com/mig.capable": "true",
            "nvidia.com/mig.strategy": "single",
            POOL_LABEL: "train",
        },
        "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
    },
    "spec": {"podCIDR": "10.244.3.0/24", "providerID": "baremetal://dgx-a100-01"},
    "status": {
        "capacity": {
            "cpu": "256",
            "ephemeral-storage": "1844244448Ki",
            "hugepages-1Gi": "0",
            "memory": "2113276384Ki",
            "nvidia.com/gpu": "8",
            "pods": "110",
        },
        "allocatable": {
            "cpu": "255500m",
            "ephemeral-storage": "1699655753927",
            "hugepages-1Gi": "0",
            "memory": "2112149984Ki",
            "nvidia.com/gpu": "8",
            "pods": "110",
        },
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        "nodeInfo": {"kubeletVersion": "v1.29.4", "containerRuntimeVersion": "containerd://1.7.13"},
    },
}

TIME_SLICED_L4 = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {
        "name": "gke-lab-l4-pool-7f3a",
        "labels": {
            "cloud.google.com/gke-accelerator": "nvidia-l4",
            "kubernetes.io/hostname": "gke-lab-l4-pool-7f3a",
            "nvidia.com/gpu.count": "1",
            "nvidia.com/gpu.memory": "23034",
            "nvidia.com/gpu.product": "NVIDIA-L4-SHARED",
            "nvidia.com/gpu.replicas": "4",
            "nvidia.com/gpu.sharing-strategy": "time-slicing",
            "nvidia.com/mig.capable": "false",
        },
    },
    "spec": {},
    "status": {
        "capacity": {"cpu": "8", "memory": "32880524Ki", "nvidia.com/gpu": "4"},
        "allocatable": {"cpu": "7910m", "memory": "29130636Ki", "nvidia.com/gpu": "4"},
    },
}

MIG_SINGLE = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {
        "name": "mig-node-1",
        "labels": {
            "nvidia.com/gpu.count": "7",
            "nvidia.com/gpu.memory": "4864",
            "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb",
            "nvidia.com/mig.capable": "true",
            "nvidia.com/mig.strategy": "single",
        },
    },
    "spec": {},
    "status": {"allocatable": {"cpu": "32", "memory": "128Gi", "nvidia.com/gpu": "7"}},
}

CPU_NODE = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {"name": "cpu-01", "labels": {"kubernetes.io/hostname": "cpu-01"}},
    "spec": {},
    "status": {
        "capacity": {"cpu": "16", "memory": "65842012Ki", "pods": "110"},
        "allocatable": {"cpu": "15800m", "memory": "64714588Ki", "pods": "110"},
    },
}


def test_gpu_node_from_feature_discovery_labels():
    [node] = nodes_from_kube([DGX_A100])

    assert node.name == "dgx-a100-01"
    assert node.cpu_milli == 255500
    assert node.memory_mib == 2112149984 // 1024
    assert node.labels[SOURCE_LABEL] == "kubernetes"
    assert node.labels["nvidia.com/gpu.family"] == "ampere"
    assert [gpu.index for gpu in node.gpus] == list(range(8))
    assert node.gpus[3].uuid == "GPU-kube-dgx-a100-01-3"
    for gpu in node.gpus:
        assert (gpu.model, gpu.memory_mib, gpu.mig_capable) == ("A100-80GB", 81920, True)
        assert gpu.pools == frozenset({"train"})
        assert gpu.node == "dgx-a100-01"
        assert gpu.simulated is False


def test_a_node_list_mixes_gpu_and_cpu_nodes_in_order(caplog):
    node_list = {"apiVersion": "v1", "kind": "NodeList", "items": [CPU_NODE, DGX_A100, TIME_SLICED_L4]}

    nodes = nodes_from_kube(node_list["items"])

    assert [(node.name, len(node.gpus)) for node in nodes] == [
        ("cpu-01", 0),
        ("dgx-a100-01", 8),
        ("gke-lab-l4-pool-7f3a", 1),
    ]
    assert nodes[0].cpu_milli == 15800
    assert nodes[0].memory_mib == 64714588 // 1024
    assert not [record for record in caplog.records if record.name == "gpuslice.inventory"]


def test_time_slicing_replicas_do_not_multiply_the_physical_gpus():
    [node] = nodes_from_kube([TIME_SLICED_L4])

    [gpu] = node.gpus
    assert (gpu.model, gpu.memory_mib, gpu.mig_capable) == ("L4", 23034, False)
    assert gpu.pools == frozenset({"dev"})


def test_mig_instances_under_the_single_strategy_are_gpus_that_cannot_be_split_again():
    [node] = nodes_from_kube([MIG_SINGLE])

    assert len(node.gpus) == 7
    assert {(gpu.model, gpu.memory_mib, gpu.mig_capable) for gpu in node.gpus} == {
        ("A100-40GB MIG-1g.5gb", 4864, False)
    }
    assert node.memory_mib == 128 * 1024


def test_cordoned_nodes_are_left_out_unless_asked_for():
    cordoned = copy.deepcopy(DGX_A100)
    cordoned["spec"]["unschedulable"] = True
    cordoned["spec"]["taints"] = [{"effect": "NoSchedule", "key": "node.kubernetes.io/unschedulable"}]

    assert nodes_from_kube([cordoned, CPU_NODE]) == nodes_from_kube([CPU_NODE])
    assert [node.name for node in nodes_from_kube([cordoned], include_unschedulable=True)] == ["dgx-a100-01"]


def test_pool_label_both_and_a_custom_label_key():
    node = copy.deepcopy(TIME_SLICED_L4)
    node["metadata"]["labels"]["lab.example.org/gpu-pool"] = "both"

    [found] = nodes_from_kube([node], pool_label="lab.example.org/gpu-pool")

    assert found.gpus[0].pools == frozenset({"dev", "train"})


def test_an_unknown_pool_label_warns_and_uses_the_default_pools(inventory_log):
    node = copy.deepcopy(DGX_A100)
    node["metadata"]["labels"][POOL_LABEL] = "nightly"

    [found] = nodes_from_kube([node], default_pools=frozenset({"train"}))

    assert all(gpu.pools == frozenset({"train"}) for gpu in found.gpus)
    [record] = inventory_log()
    assert "dgx-a100-01" in record.getMessage()
    assert "'nightly'" in record.getMessage()


def test_gpus_without_feature_discovery_labels_are_left_out_with_a_warning(inventory_log):
    bare = copy.deepcopy(DGX_A100)
    bare["metadata"]["labels"] = {"kubernetes.io/hostname": "dgx-a100-01"}

    [node] = nodes_from_kube([bare])

    assert node.gpus == ()
    assert node.cpu_milli == 255500
    [record] = inventory_log()
    assert "nvidia.com/gpu=8" in record.getMessage()
    assert "gpu-feature-discovery" in record.getMessage()


@pytest.mark.parametrize(
    ("label", "value"),
    [("nvidia.com/gpu.memory", ""), ("nvidia.com/gpu.count", "eight"), ("nvidia.com/gpu.count", "0")],
)
def test_unreadable_gpu_labels_leave_the_gpus_out_with_a_warning(inventory_log, label, value):
    odd = copy.deepcopy(DGX_A100)
    odd["metadata"]["labels"][label] = value

    [node] = nodes_from_kube([odd, CPU_NODE])[:1]

    assert node.gpus == ()
    [record] = inventory_log()
    assert label in record.getMessage()


def test_allocatable_is_preferred_and_capacity_used_when_it_is_missing():
    only_capacity = copy.deepcopy(CPU_NODE)
    del only_capacity["status"]["allocatable"]

    [node] = nodes_from_kube([only_capacity])

    assert (node.cpu_milli, node.memory_mib) == (16000, 65842012 // 1024)


def test_an_unreadable_quantity_counts_as_zero_with_a_warning(inventory_log):
    odd = copy.deepcopy(CPU_NODE)
    odd["status"]["allocatable"]["cpu"] = "sixteen"

    [node] = nodes_from_kube([odd])

    assert node.cpu_milli == 0
    assert "sixteen" in inventory_log()[0].getMessage()


def test_a_node_object_without_a_name_is_skipped(inventory_log):
    assert nodes_from_kube([{"metadata": {}}, CPU_NODE])[0].name == "cpu-01"
    assert len(inventory_log()) == 1


@pytest.mark.parametrize(
    ("quantity", "value"),
    [
        ("64", Decimal(64)),
        ("255500m", Decimal("255.5")),
        ("2112149984Ki", Decimal(2112149984 * 1024)),
        ("1.5Gi", Decimal(1610612736)),
        ("128974848", Decimal(128974848)),
        ("129e6", Decimal(129000000)),
        ("123M", Decimal(123000000)),
        ("1E", Decimal(10) ** 18),
        ("100u", Decimal("0.0001")),
        (8, Decimal(8)),
    ],
)
def test_parse_quantity(quantity, value):
    assert parse_quantity(quantity) == value


@pytest.mark.parametrize("quantity", ["", "sixteen", "12 cores", "1Qi", "1.2.3"])
def test_parse_quantity_refuses_what_kubernetes_would(quantity):
    with pytest.raises(ValueError, match="is not a Kubernetes quantity"):
        parse_quantity(quantity)
