"""Simulated demo GPUs: usable like real ones, and labelled simulated everywhere they appear."""

from __future__ import annotations

import pytest

from spawner.inventory import SOURCE_LABEL, PoolRule, simulated_nodes


def test_default_is_this_host_with_four_simulated_80gb_gpus(fixed_host):
    [node] = simulated_nodes()

    assert node.name == fixed_host.name
    assert (node.cpu_milli, node.memory_mib) == (fixed_host.cpu_milli, fixed_host.memory_mib)
    assert node.labels[SOURCE_LABEL] == "simulated"
    assert len(node.gpus) == 4
    for index, gpu in enumerate(node.gpus):
        assert gpu.simulated is True
        assert gpu.uuid == f"GPU-sim-{fixed_host.name}-{index}"
        assert gpu.model == "A100-80GB"
        assert gpu.label == "A100-80GB (simulated)"
        assert gpu.memory_mib == 81920
        assert gpu.pools == frozenset({"dev"})


def test_count_model_memory_node_and_pools_are_configurable(fixed_host):
    [node] = simulated_nodes(
        node_name="demo",
        count=2,
        model="H100-80GB",
        memory_mib=81559,
        pools=PoolRule(by_gpu={"1": frozenset({"train"})}),
    )

    assert node.name == "demo"
    assert [(gpu.uuid, gpu.model, gpu.memory_mib, gpu.pools) for gpu in node.gpus] == [
        ("GPU-sim-demo-0", "H100-80GB", 81559, frozenset({"dev"})),
        ("GPU-sim-demo-1", "H100-80GB", 81559, frozenset({"train"})),
    ]
    assert all(gpu.simulated for gpu in node.gpus)


def test_simulated_gpus_match_profiles_by_plain_model_and_are_labelled_simulated(fixed_host):
    from spawner.core.units import SliceRequest

    [node] = simulated_nodes()
    assert all(SliceRequest(milli_gpu=125, gpu_models=frozenset({"A100-80GB"})).allows(g) for g in node.gpus)
    assert {gpu.label for gpu in node.gpus} == {"A100-80GB (simulated)"}


def test_zero_gpus_is_refused(fixed_host):
    with pytest.raises(ValueError, match="count must be 1 or more"):
        simulated_nodes(count=0)
