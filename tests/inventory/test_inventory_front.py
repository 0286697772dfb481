"""The configurable Inventory: which source it reads, its fallbacks, and its configuration."""

from __future__ import annotations

import asyncio
import logging
import textwrap

import pynvml
import pytest
from traitlets import TraitError
from traitlets.config import Config

from spawner.inventory import SOURCE_LABEL, Inventory, InventoryConfigError, describe_pools

STATIC = textwrap.dedent("""\
    nodes:
      - name: rack-1
        cpu: 32
        memory_mib: 262144
        gpus:
          - {count: 2, model: L40S, memory_mib: 46068}
    """)


@pytest.fixture
def static_file(tmp_path):
    path = tmp_path / "gpus.yaml"
    path.write_text(STATIC)
    return str(path)


def sources(nodes) -> set[str]:
    return {node.labels[SOURCE_LABEL] for node in nodes}


def test_auto_uses_nvml_when_it_finds_gpus(install_nvml, fixed_host, static_file, inventory_log):
    install_nvml()

    nodes = Inventory(static_path=static_file).discover()

    assert sources(nodes) == {"nvml"}
    assert len(nodes[0].gpus) == 2
    assert inventory_log() == []


def test_auto_falls_back_to_the_static_file_when_nvml_finds_nothing(
    install_nvml, fixed_host, static_file, caplog
):
    install_nvml(init_error=pynvml.NVMLError_LibraryNotFound)
    caplog.set_level(logging.INFO, logger="gpuslice.inventory")

    nodes = Inventory(static_path=static_file).discover()

    assert sources(nodes) == {"static"}
    assert [node.name for node in nodes] == ["rack-1"]
    assert any(static_file in record.getMessage() for record in caplog.records)


def test_auto_falls_back_to_simulated_gpus_and_says_so(install_nvml, fixed_host, inventory_log):
    install_nvml(devices=[])

    [node] = Inventory().discover()

    assert node.labels[SOURCE_LABEL] == "simulated"
    assert len(node.gpus) == 4
    assert all(gpu.simulated and "simulated" in gpu.label for gpu in node.gpus)
    [record] = inventory_log()
    assert "4 A100-80GB (simulated) GPUs" in record.getMessage()


def test_nvml_source_does_not_fall_back(install_nvml, fixed_host, static_file, inventory_log):
    install_nvml(init_error=pynvml.NVMLError_DriverNotLoaded)

    assert Inventory(source="nvml", static_path=static_file).discover() == []
    assert len(inventory_log()) == 1


def test_static_source_reads_the_file_without_touching_nvml(install_nvml, static_file):
    fake = install_nvml()

    nodes = Inventory(source="static", static_path=static_file).discover()

    assert sources(nodes) == {"static"}
    assert fake.calls == []


def test_static_source_without_a_path_is_a_config_error():
    with pytest.raises(InventoryConfigError, match="Inventory.static_path is not set"):
        Inventory(source="static").discover()


def test_a_broken_static_file_is_reported_not_replaced_by_simulated_gpus(install_nvml, tmp_path):
    install_nvml(devices=[])
    broken = tmp_path / "gpus.yaml"
    broken.write_text("nodes:\n  - name: a\n    cpu: 1\n    memory_mib: lots\n")

    with pytest.raises(InventoryConfigError, match=r"gpus.yaml:4: nodes\[0\].memory_mib"):
        Inventory(static_path=str(broken)).discover()


def test_simulated_source_from_traitlets_config(fixed_host):
    config = Config()
    config.Inventory.source = "Simulated"
    config.Inventory.node_name = "demo"
    config.Inventory.simulated_gpu_count = 2
    config.Inventory.simulated_gpu_model = "H100-80GB"
    config.Inventory.simulated_gpu_memory_mib = 81559

    [node] = Inventory(config=config).discover()

    assert node.name == "demo"
    assert [(gpu.uuid, gpu.model, gpu.memory_mib) for gpu in node.gpus] == [
        ("GPU-sim-demo-0", "H100-80GB", 81559),
        ("GPU-sim-demo-1", "H100-80GB", 81559),
    ]


def test_pools_of_discovered_gpus_follow_the_configuration(install_nvml, devices, fixed_host):
    install_nvml(devices)
    inventory = Inventory(
        source="nvml",
        default_pools=["train"],
        train_gpu_indices=[0],
        gpu_pools={devices[1].uuid: "both"},
    )

    [node] = inventory.discover()

    assert [gpu.pools for gpu in node.gpus] == [frozenset({"train"}), frozenset({"dev", "train"})]


def test_gpu_pools_by_index_win_over_train_gpu_indices(fixed_host):
    inventory = Inventory(source="simulated", train_gpu_indices=[0, 1], gpu_pools={"1": ["dev"]})

    [node] = inventory.discover()

    assert [gpu.pools for gpu in node.gpus] == [
        frozenset({"train"}),
        frozenset({"dev"}),
        frozenset({"dev"}),
        frozenset({"dev"}),
    ]


@pytest.mark.parametrize(
    ("trait", "value", "message"),
    [
        ("default_pools", ["nightly"], "unknown pool 'nightly'"),
        ("default_pools", [], "at least one pool"),
        ("gpu_pools", {"0": "trian"}, "Inventory.gpu_pools['0']: unknown pool 'trian'"),
        ("source", "slurm", "source"),
        ("simulated_gpu_count", 0, "simulated_gpu_count"),
    ],
)
def test_bad_configuration_is_refused_when_set(trait, value, message):
    with pytest.raises(TraitError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Inventory(**{trait: value})


def test_every_configurable_trait_has_help():
    traits = Inventory.class_traits(config=True)

    assert traits
    assert [name for name, trait in traits.items() if not (trait.help or "").strip()] == []


def test_discover_async_gives_the_same_nodes(fixed_host):
    inventory = Inventory(source="simulated", simulated_gpu_count=3)

    assert asyncio.run(inventory.discover_async()) == inventory.discover()


DEV, TRAIN = frozenset({"dev"}), frozenset({"train"})


@pytest.mark.parametrize(
    ("count", "pools"),
    [
        (1, [DEV]),  # one GPU stays for notebooks; batch jobs borrow it while it is idle
        (2, [DEV, TRAIN]),
        (4, [DEV, DEV, TRAIN, TRAIN]),
        (5, [DEV, DEV, DEV, TRAIN, TRAIN]),
        (8, [DEV] * 4 + [TRAIN] * 4),
    ],
)
def test_unconfigured_hosts_split_half_dev_half_train_as_the_case_study_does(fixed_host, count, pools):
    [node] = Inventory(source="simulated", simulated_gpu_count=count).discover()

    assert [gpu.pools for gpu in node.gpus] == pools


def test_real_gpus_split_the_same_way_by_the_configured_share(install_nvml, devices, fixed_host):
    install_nvml(devices)

    [node] = Inventory(source="nvml").discover()
    assert [(gpu.index, gpu.pools) for gpu in node.gpus] == [(0, DEV), (1, TRAIN)]
    [node] = Inventory(source="nvml", train_share=0).discover()
    assert [gpu.pools for gpu in node.gpus] == [DEV, DEV]


@pytest.mark.parametrize(
    "choice",
    [{"train_gpu_indices": [3]}, {"gpu_pools": {"0": "both"}}, {"default_pools": ["dev"]}],
)
def test_any_pool_the_admin_chose_turns_the_split_off(fixed_host, choice):
    inventory = Inventory(source="simulated", **choice)

    pools = [gpu.pools for gpu in inventory.discover()[0].gpus]
    assert pools.count(TRAIN) == (1 if "train_gpu_indices" in choice else 0)
    assert [gpu.pools for gpu in inventory.discover()[0].gpus] == pools  # and it stays off


def test_the_start_up_log_line_says_which_gpu_is_in_which_pool(fixed_host):
    nodes = Inventory(source="simulated", node_name="lab").discover()

    assert describe_pools(nodes) == "dev: lab:0, lab:1; train: lab:2, lab:3"
    assert describe_pools([]) == "no GPU"
