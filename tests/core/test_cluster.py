import numpy as np
import pytest

from spawner.core.cluster import CapacityError, ClusterState
from spawner.core.units import GPUShare, Placement, SliceRequest

from .helpers import make_cluster_nodes, make_node


def snapshot(cluster):
    return (
        cluster.milli_free.copy(),
        cluster.gpu_memory_free.copy(),
        cluster.cpu_free.copy(),
        cluster.memory_free.copy(),
    )


def test_allocate_then_release_restores_exactly():
    cluster = ClusterState(make_cluster_nodes(2))
    before = snapshot(cluster)
    placement = cluster.placement_for(1, [3], SliceRequest(milli_gpu=250, cpu_milli=4000, memory_mib=1024))
    cluster.allocate(placement)
    assert cluster.milli_free[1, 3] == 750
    assert cluster.gpu_memory_free[1, 3] == 81920 - 20480
    assert cluster.cpu_free[1] == 60000
    cluster.release(placement)
    for old, new in zip(before, snapshot(cluster), strict=True):
        assert np.array_equal(old, new)
    assert cluster.version[1] == 2


def test_over_capacity_is_refused_and_changes_nothing():
    cluster = ClusterState([make_node("a", gpus=1)])
    cluster.allocate(Placement("a", (GPUShare("GPU-a-0", 800, 1000),)))
    before = snapshot(cluster)
    with pytest.raises(CapacityError, match="out of bounds"):
        cluster.allocate(Placement("a", (GPUShare("GPU-a-0", 300, 1000),)))
    with pytest.raises(CapacityError, match="not on node"):
        cluster.allocate(Placement("a", (GPUShare("GPU-b-0", 1, 1),)))
    with pytest.raises(CapacityError, match="out of bounds"):
        cluster.release(Placement("a", (GPUShare("GPU-a-0", 900, 0),)))
    for old, new in zip(before, snapshot(cluster), strict=True):
        assert np.array_equal(old, new)


def test_whole_gpu_candidates_are_the_first_fully_free_gpus():
    cluster = ClusterState([make_node("a", gpus=4)])
    cluster.allocate(Placement("a", (GPUShare("GPU-a-1", 100, 100),)))
    mask = cluster.candidate_mask(SliceRequest(gpus=2))
    assert mask[0].tolist() == [True, False, True, False]
    assert not cluster.candidate_mask(SliceRequest(gpus=4)).any()


def test_models_and_pools_restrict_candidates():
    nodes = [make_node("a", gpus=2, model="T4"), make_node("b", gpus=2, pools=frozenset({"train"}))]
    cluster = ClusterState(nodes)
    assert cluster.candidate_mask(SliceRequest(gpus=1, gpu_models=frozenset({"T4"})))[:, :2].tolist() == [
        [True, False],
        [False, False],
    ]
    assert cluster.candidate_mask(SliceRequest(gpus=1, pool="train"))[1].any()
    assert not cluster.candidate_mask(SliceRequest(gpus=1, pool="train"))[0].any()


@pytest.mark.parametrize(
    "request_, expected",
    [
        (SliceRequest(gpus=1, gpu_models=frozenset({"H100"})), "no GPU of H100 exists"),
        (SliceRequest(gpus=9), "no node has 9 GPUs"),
        (SliceRequest(milli_gpu=600), "no GPU has 0.6 of a GPU free"),
        (SliceRequest(gpus=2), "no node has 2 whole GPUs free"),
    ],
)
def test_explain_no_fit_names_the_shortage(request_, expected):
    cluster = ClusterState([make_node("a", gpus=2), make_node("b", gpus=2)])
    for node in ("a", "b"):
        cluster.allocate(
            Placement(node, (GPUShare(f"GPU-{node}-0", 500, 0), GPUShare(f"GPU-{node}-1", 500, 0)))
        )
    assert expected in cluster.explain_no_fit(request_)


def test_explain_no_fit_for_cpu():
    cluster = ClusterState([make_node("a", gpus=1, cpu_milli=1000)])
    assert "milli-CPU" in cluster.explain_no_fit(SliceRequest(milli_gpu=100, cpu_milli=2000))
