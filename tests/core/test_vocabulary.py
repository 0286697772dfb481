"""The words of the domain are spelled once: states, priorities, pools, holders, the cell bundle.

The JSON Schemas that cannot import the vocabulary (the YAML files' schemas, shipped as JSON) are
checked against it here, so a pool added to the vocabulary cannot be refused by a schema.
"""

from __future__ import annotations

import json
import pickle
from importlib import resources
from typing import Any

import pytest

from spawner.core.cell_bundle import BUNDLE_FORMAT, CELL_MODE, FILE_MODE, CellBundle
from spawner.core.units import SIMULATED_UUID_PREFIX, describe_size
from spawner.core.vocabulary import (
    DEV_POOL,
    POOLS,
    PRIORITIES,
    STATES,
    TERMINAL_STATES,
    UNFINISHED_STATES,
    JobState,
    Priority,
    expiring_holder,
    has_expiry,
    holder_expiry,
    holder_label,
    server_holder,
    server_of_holder,
)
from spawner.inventory.simulated import simulated_nodes

# --------------------------------------------------------------------------------- states


def test_a_job_state_is_its_plain_word_in_comparisons_sets_and_text():
    assert JobState.queued == "queued" and str(JobState.running) == "running"
    assert f"{JobState.failed}" == "failed"
    assert "succeeded" in TERMINAL_STATES and "queued" not in TERMINAL_STATES
    assert json.dumps({"state": JobState.cancelled}) == '{"state": "cancelled"}'


def test_every_state_is_terminal_or_unfinished_and_none_is_both():
    assert set(STATES) == {state.value for state in JobState}
    assert TERMINAL_STATES | UNFINISHED_STATES == set(JobState)
    assert not TERMINAL_STATES & UNFINISHED_STATES


def test_priorities_are_written_lowest_first_and_rank_highest_first():
    assert PRIORITIES == ("low", "normal", "high")
    assert sorted(Priority, reverse=True) == [Priority.high, Priority.normal, Priority.low]


# -------------------------------------------------------------------------------- holders


def test_a_server_holder_is_read_back_for_its_own_user_only():
    assert server_holder("alice", "") == "alice/"
    assert server_of_holder(server_holder("alice", "gpu"), "alice") == "gpu"
    assert server_of_holder(server_holder("alice", ""), "alice") == ""
    assert server_of_holder(server_holder("alice", "gpu"), "bob") is None
    assert server_of_holder("job-12", "alice") is None


def test_an_expiring_holder_keeps_its_label_and_its_expiry_rounded_up():
    holder = expiring_holder("maintenance", 1_893_456_000.2)
    assert holder == "maintenance until 2030-01-01T00:00:01Z"
    assert has_expiry(holder) and not has_expiry("maintenance")
    assert holder_expiry(holder) == 1_893_456_001 and holder_expiry("maintenance") is None
    assert holder_label(holder) == "maintenance"
    assert server_of_holder(expiring_holder(server_holder("alice", ""), 1e9), "alice") == ""


# ---------------------------------------------------------------------------------- pools


def _enums(document: Any) -> list[list[Any]]:
    """Every ``enum`` list anywhere in a JSON document."""
    found = []
    if isinstance(document, dict):
        if isinstance(document.get("enum"), list):
            found.append(document["enum"])
        for value in document.values():
            found += _enums(value)
    elif isinstance(document, list):
        for value in document:
            found += _enums(value)
    return found


@pytest.mark.parametrize(
    "package, name",
    [("spawner.config", "profiles.schema.json"), ("spawner.inventory", "gpus.schema.json")],
)
def test_the_yaml_schemas_name_the_vocabularys_pools(package, name):
    schema = json.loads(resources.files(package).joinpath(name).read_text())
    pool_enums = [enum for enum in _enums(schema) if DEV_POOL in enum]
    assert pool_enums, f"{name} names no pool"
    for enum in pool_enums:
        assert enum in (list(POOLS), [*POOLS, "both"]), f"{name}: {enum} is not {list(POOLS)} (or 'both')"


def test_the_api_schemas_are_built_from_the_vocabulary():
    from spawner.service.job_request import JOB_BODY_SCHEMA
    from spawner.service.lease_request import SLICE_REQUEST_SCHEMA

    assert JOB_BODY_SCHEMA["properties"]["priority"]["enum"] == list(PRIORITIES)
    assert SLICE_REQUEST_SCHEMA["properties"]["pool"]["enum"] == list(POOLS)


def test_simulated_gpus_carry_the_simulated_uuid_prefix():
    [node] = simulated_nodes(node_name="demo", count=2)
    assert all(gpu.uuid.startswith(SIMULATED_UUID_PREFIX) and gpu.simulated for gpu in node.gpus)


# ---------------------------------------------------------------------------- cell bundle


def test_a_cell_bundle_travels_as_bytes_and_comes_back_equal():
    bundle = CellBundle(
        source="y = x + 1\n", filename="<cell>", imports=["import math"], values=b"v", returns=["y"]
    )
    again = CellBundle.from_bytes(bundle.to_bytes())
    assert again == bundle and again.mode == CELL_MODE and again.format == BUNDLE_FORMAT
    script = CellBundle(source="print(1)\n", filename="train.py", mode=FILE_MODE, argv=["train.py", "-v"])
    assert CellBundle.from_dict(script.to_dict()) == script


@pytest.mark.parametrize(
    "fields",
    [["not", "a", "dict"], {"source": "x = 1", "filename": "<cell>"}, {"format": BUNDLE_FORMAT + 1}],
)
def test_anything_but_a_bundle_of_this_format_is_refused(fields):
    with pytest.raises(ValueError, match=f"not a gpuslice cell bundle of format {BUNDLE_FORMAT}"):
        CellBundle.from_bytes(pickle.dumps(fields))


# ---------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "size, words",
    [(12, "12 bytes"), (1024, "1 KiB"), (300_000, "293 KiB"), (2_411_724, "2.3 MiB"), (3 * 2**30, "3 GiB")],
)
def test_sizes_are_written_as_people_read_them(size, words):
    assert describe_size(size) == words
