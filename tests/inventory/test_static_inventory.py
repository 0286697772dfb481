"""The static YAML inventory: what good files describe, and how bad files are reported."""

from __future__ import annotations

import textwrap
from pathlib import Path

import jsonschema
import pytest

from spawner.config.yaml_problems import render_path
from spawner.inventory import SOURCE_LABEL, InventoryConfigError, load_static, parse_static
from spawner.inventory.static import load_schema

EXAMPLE = Path(__file__).resolve().parents[2] / "profiles" / "gpus.example.yaml"


def yaml_text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


@pytest.fixture
def gpus_yaml(tmp_path, monkeypatch):
    """Write ``profiles/gpus.yaml`` under a fresh working directory; returns its relative path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "profiles").mkdir()

    def write(text: str) -> str:
        (tmp_path / "profiles" / "gpus.yaml").write_text(yaml_text(text))
        return "profiles/gpus.yaml"

    return write


def errors_of(text: str, filename: str = "gpus.yaml") -> list[str]:
    with pytest.raises(InventoryConfigError) as raised:
        parse_static(yaml_text(text), filename)
    return raised.value.errors


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(load_schema())


def test_example_file_describes_three_nodes_with_their_pools():
    nodes = load_static(EXAMPLE)

    by_name = {node.name: node for node in nodes}
    assert list(by_name) == ["gpu-a", "gpu-b", "gpu-c"]
    gpu_a = by_name["gpu-a"]
    assert (gpu_a.cpu_milli, gpu_a.memory_mib) == (64000, 524288)
    assert gpu_a.labels["rack"] == "r1"
    assert gpu_a.labels[SOURCE_LABEL] == "static"
    assert [gpu.index for gpu in gpu_a.gpus] == list(range(8))
    assert [gpu.pools for gpu in gpu_a.gpus] == [frozenset({"dev"})] * 4 + [frozenset({"train"})] * 4
    assert gpu_a.gpus[5].uuid == "GPU-static-gpu-a-5"
    assert all(gpu.pools == frozenset({"train"}) and gpu.mig_capable for gpu in by_name["gpu-b"].gpus)
    assert [gpu.uuid for gpu in by_name["gpu-c"].gpus] == [
        "GPU-5c1f7a2e-8d3b-4e0a-9f61-2b7c4d9e0a11",
        "GPU-9a0e3d4c-1b2f-4a5e-8c7d-6f1e2d3c4b55",
    ]
    assert all(gpu.pools == frozenset({"dev", "train"}) for gpu in by_name["gpu-c"].gpus)
    assert not any(gpu.simulated for node in nodes for gpu in node.gpus)


def test_uuids_of_gpus_listed_by_count_are_the_same_on_every_load():
    assert load_static(EXAMPLE) == load_static(EXAMPLE)


def test_counted_gpus_fill_the_lowest_indices_left_free_by_explicit_ones():
    [node] = parse_static(
        yaml_text("""
        nodes:
          - name: mixed
            cpu: 15.5
            memory_mib: 1024
            gpus:
              - count: 2
                model: T4
                memory_mib: 15360
              - index: 0
                uuid: GPU-real-zero
                model: L4
                memory_mib: 23034
              - count: 1
                model: T4
                memory_mib: 15360
        """)
    )

    assert node.cpu_milli == 15500
    assert [(gpu.index, gpu.uuid, gpu.model) for gpu in node.gpus] == [
        (0, "GPU-real-zero", "L4"),
        (1, "GPU-static-mixed-1", "T4"),
        (2, "GPU-static-mixed-2", "T4"),
        (3, "GPU-static-mixed-3", "T4"),
    ]


def test_gpu_pools_override_the_node_pools_and_dev_is_the_default():
    first, second = parse_static(
        yaml_text("""
        nodes:
          - name: shared
            cpu: 8
            memory_mib: 1024
            pools: both
            gpus:
              - {count: 1, model: L4, memory_mib: 23034}
              - {count: 1, model: L4, memory_mib: 23034, pools: [train]}
          - name: plain
            cpu: 8
            memory_mib: 1024
            gpus:
              - {model: L4, memory_mib: 23034}
        """)
    )

    assert [gpu.pools for gpu in first.gpus] == [frozenset({"dev", "train"}), frozenset({"train"})]
    assert [gpu.pools for gpu in second.gpus] == [frozenset({"dev"})]


def test_a_node_without_gpus_is_kept_for_cpu_only_work():
    [node] = parse_static("nodes: [{name: cpu-1, cpu: 32, memory_mib: 131072}]")

    assert node.gpus == ()
    assert node.cpu_milli == 32000


def test_yaml_anchors_and_merge_keys_can_repeat_a_gpu_entry():
    nodes = parse_static(
        yaml_text("""
        nodes:
          - name: n1
            cpu: 4
            memory_mib: 1024
            gpus:
              - &a100 {model: A100-80GB, memory_mib: 81920, count: 2}
              - {<<: *a100, count: 1, pools: train}
        """)
    )

    assert [(gpu.model, gpu.memory_mib, gpu.pools) for gpu in nodes[0].gpus] == [
        ("A100-80GB", 81920, frozenset({"dev"})),
        ("A100-80GB", 81920, frozenset({"dev"})),
        ("A100-80GB", 81920, frozenset({"train"})),
    ]


def test_bad_value_names_file_line_field_and_what_was_expected(gpus_yaml):
    path = gpus_yaml("""
        # GPUs of the lab
        nodes:
          - name: gpu-a
            cpu: 64
            memory_mib: 524288
            gpus:
              - count: 4
                model: A100-80GB
                memory_mib: 81920
              - count: 4
                model: A100-80GB
                memory_mib: lots
                pools: train
        """)

    with pytest.raises(InventoryConfigError) as raised:
        load_static(path)

    assert (
        str(raised.value)
        == "profiles/gpus.yaml:12: nodes[0].gpus[1].memory_mib: expected an integer > 0, got 'lots'"
    )
    assert isinstance(raised.value, ValueError)
    assert raised.value.source == "profiles/gpus.yaml"


def test_every_problem_is_listed_at_once_in_line_order():
    errors = errors_of("""
        nodes:
          - name: gpu-a
            cpu: many
            memory_mib: 0
            gpus:
              - model: A100
                memroy_mib: 3
                memory_mib: 81920
                pools: trian
          - cpu: 4
            memory_mib: 10
            labels: {zone: 1}
        """)

    assert errors == [
        "gpus.yaml:3: nodes[0].cpu: expected a number of CPU cores > 0 (e.g. 64 or 15.5), got 'many'",
        "gpus.yaml:4: nodes[0].memory_mib: expected an integer > 0 (host memory in MiB), got 0",
        "gpus.yaml:7: nodes[0].gpus[0].memroy_mib: unknown field (did you mean 'memory_mib'?); "
        "expected one of: count, index, uuid, model, memory_mib, pools, mig_capable",
        "gpus.yaml:9: nodes[0].gpus[0].pools: expected 'dev', 'train', 'both' or a non-empty list of "
        "'dev'/'train', got 'trian'",
        "gpus.yaml:10: nodes[1]: missing field 'name'; expected a non-empty node (host) name",
        'gpus.yaml:12: nodes[1].labels.zone: expected a string (quote values such as "1" or "true"), got 1',
    ]


def test_the_message_of_many_problems_counts_them_and_lists_each():
    with pytest.raises(InventoryConfigError) as raised:
        parse_static("nodes: [{name: a, cpu: 0, memory_mib: -1}]", "profiles/gpus.yaml")

    message = str(raised.value)
    assert message.startswith("profiles/gpus.yaml: 2 problems in the GPU inventory:\n")
    assert "  profiles/gpus.yaml:1: nodes[0].cpu: expected" in message
    assert "  profiles/gpus.yaml:1: nodes[0].memory_mib: expected" in message


def test_a_pool_list_with_an_unknown_pool_is_refused():
    [error] = errors_of("""
        nodes:
          - name: a
            cpu: 1
            memory_mib: 1
            pools: [dev, nightly]
        """)

    assert error.startswith("gpus.yaml:5: nodes[0].pools: expected 'dev', 'train', 'both'")
    assert error.endswith("got a list")


def test_a_key_given_twice_is_reported_with_both_lines():
    [error] = errors_of("""
        nodes:
          - name: a
            cpu: 1
            memory_mib: 1
            cpu: 2
        """)

    assert error == "gpus.yaml:5: nodes[0].cpu: given twice (first on line 3); the second would silently win"


def test_index_or_uuid_with_a_count_above_one_is_refused():
    errors = errors_of("""
        nodes:
          - name: a
            cpu: 1
            memory_mib: 1
            gpus:
              - count: 2
                index: 0
                uuid: GPU-x
                model: T4
                memory_mib: 15360
        """)

    assert errors == [
        "gpus.yaml:7: nodes[0].gpus[0].index: index names one GPU but count is 2; "
        "drop index, or list each GPU on its own",
        "gpus.yaml:8: nodes[0].gpus[0].uuid: uuid names one GPU but count is 2; "
        "drop uuid, or list each GPU on its own",
    ]


def test_an_index_used_twice_on_a_node_is_refused():
    [error] = errors_of("""
        nodes:
          - name: a
            cpu: 1
            memory_mib: 1
            gpus:
              - {index: 1, model: T4, memory_mib: 15360}
              - {index: 1, model: T4, memory_mib: 15360}
        """)

    assert error == "gpus.yaml:7: nodes[0].gpus[1].index: index 1 is already used by nodes[0].gpus[0]"


def test_a_uuid_used_twice_in_the_file_is_refused():
    [error] = errors_of("""
        nodes:
          - name: a
            cpu: 1
            memory_mib: 1
            gpus: [{uuid: GPU-same, model: T4, memory_mib: 15360}]
          - name: b
            cpu: 1
            memory_mib: 1
            gpus: [{uuid: GPU-same, model: T4, memory_mib: 15360}]
        """)

    assert (
        error == "gpus.yaml:9: nodes[1].gpus[0].uuid: GPU uuid 'GPU-same' is already used by nodes[0].gpus[0]"
    )


def test_a_node_name_used_twice_is_refused():
    [error] = errors_of("""
        nodes:
          - {name: a, cpu: 1, memory_mib: 1}
          - {name: a, cpu: 1, memory_mib: 1}
        """)

    assert error == "gpus.yaml:3: nodes[1].name: node name 'a' is already used by nodes[0]"


def test_label_keys_that_are_not_identifiers_are_quoted_in_the_path():
    [error] = errors_of("""
        nodes:
          - name: a
            cpu: 1
            memory_mib: 1
            labels:
              topology.kubernetes.io/zone: true
        """)

    assert error.startswith("gpus.yaml:6: nodes[0].labels['topology.kubernetes.io/zone']: expected a string")
    assert error.endswith("got true")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "gpus.yaml: expected a mapping with a 'nodes' list, got nothing (null)"),
        ("- name: a\n", "gpus.yaml:1: expected a mapping with a 'nodes' list, got a list"),
        ("nodes: []\n", "gpus.yaml:1: nodes: expected a non-empty list of nodes, got an empty list"),
        (
            "gpus: []\nnodes: [{name: a, cpu: 1, memory_mib: 1}]\n",
            "gpus.yaml:1: gpus: unknown field; expected one of: nodes",
        ),
    ],
    ids=["empty", "top-level-list", "no-nodes", "unknown-top-level"],
)
def test_wrong_shapes_of_the_whole_file(text, expected):
    assert errors_of(text) == [expected]


def test_invalid_yaml_names_the_line():
    [error] = errors_of("""
        nodes:
          - name: a
            cpu: [1
            memory_mib: 1
        """)

    assert error.startswith("gpus.yaml:4: not valid YAML:")


def test_a_missing_file_is_a_config_error_naming_it(tmp_path):
    missing = tmp_path / "nope.yaml"

    with pytest.raises(InventoryConfigError) as raised:
        load_static(missing)

    assert str(raised.value) == f"{missing}: cannot read the GPU inventory file (No such file or directory)"


@pytest.mark.parametrize(
    ("path", "text"),
    [
        (("nodes", 0, "gpus", 1, "memory_mib"), "nodes[0].gpus[1].memory_mib"),
        (("nodes", 2, "labels", "a.b/c"), "nodes[2].labels['a.b/c']"),
        ((), ""),
    ],
)
def test_render_path(path, text):
    assert render_path(path) == text
