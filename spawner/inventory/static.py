"""GPUs an admin writes down in ``profiles/gpus.yaml``: for clusters NVML cannot see from the hub.

The file is validated against ``gpus.schema.json`` (JSON Schema 2020-12) and then checked for what
a schema cannot say (an index or uuid used twice). Every problem is reported at once, each naming
the file, the line and the field, and what was expected, e.g.::

    profiles/gpus.yaml:12: nodes[0].gpus[1].memory_mib: expected an integer > 0, got 'lots'
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from spawner.config import yaml_lines
from spawner.config.yaml_problems import (
    Problem,
    duplicate_key_problems,
    problem_at,
    render_path,
    schema_problems,
)
from spawner.core.units import DEFAULT_POOLS, GPU, Node

from .base import SOURCE_LABEL, InventoryConfigError, parse_pools

SCHEMA_RESOURCE = "gpus.schema.json"


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The JSON Schema of a static inventory file, shipped inside the package."""
    text = resources.files("spawner.inventory").joinpath(SCHEMA_RESOURCE).read_text()
    return json.loads(text)


def static_uuid(node_name: str, index: int) -> str:
    """The uuid of a GPU listed by count: stable across restarts, so leases keep pointing at it."""
    return f"GPU-static-{node_name}-{index}"


def load_static(path: str | os.PathLike[str]) -> list[Node]:
    """The nodes described in the YAML file at ``path``; raises :class:`InventoryConfigError`."""
    shown = os.fspath(path)
    try:
        text = Path(path).read_text()
    except OSError as error:
        reason = error.strerror or str(error)
        raise InventoryConfigError(
            shown, [f"{shown}: cannot read the GPU inventory file ({reason})"]
        ) from error
    return parse_static(text, shown)


def parse_static(text: str, filename: str = "<gpus.yaml>") -> list[Node]:
    """The nodes described by YAML ``text``; ``filename`` is how error messages name the file."""
    try:
        document = yaml_lines.load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        line = mark.line + 1 if mark is not None else 0
        raise InventoryConfigError(
            filename, [str(Problem(filename, line, (), f"not valid YAML: {problem}"))]
        ) from error

    problems = list(duplicate_key_problems(filename, document))
    broken_schema = list(schema_problems(filename, document, load_schema()))
    if broken_schema:
        problems += broken_schema
        nodes: list[Node] = []
    else:
        nodes, build_problems = _build(filename, document)
        problems += build_problems
    if problems:
        problems.sort(key=lambda problem: problem.line)
        raise InventoryConfigError(filename, [str(problem) for problem in problems])
    return nodes


def _build(filename: str, document: dict[str, Any]) -> tuple[list[Node], list[Problem]]:
    """Nodes from a schema-valid document, plus what the schema could not check."""
    problems: list[Problem] = []
    nodes: list[Node] = []
    node_paths: dict[str, tuple[Any, ...]] = {}
    uuid_paths: dict[str, tuple[Any, ...]] = {}
    for node_index, node_doc in enumerate(document["nodes"]):
        node_path = ("nodes", node_index)
        name = node_doc["name"]
        if name in node_paths:
            problems.append(
                problem_at(
                    filename, document, (*node_path, "name"), _taken("node name", name, node_paths[name])
                )
            )
            continue
        node_paths[name] = node_path
        gpus, gpu_problems = _build_gpus(filename, document, node_doc, node_path, uuid_paths)
        problems += gpu_problems
        if gpu_problems:
            continue
        labels = {**node_doc.get("labels", {}), SOURCE_LABEL: "static"}
        cpu_milli = round(float(node_doc["cpu"]) * 1000)
        nodes.append(
            Node(
                name=name,
                cpu_milli=cpu_milli,
                memory_mib=int(node_doc["memory_mib"]),
                gpus=gpus,
                labels=labels,
            )
        )
    return nodes, problems


def _taken(what: str, value: Any, first_path: Sequence[Any]) -> str:
    return f"{what} {value!r} is already used by {render_path(first_path)}"


def _build_gpus(
    filename: str,
    document: dict[str, Any],
    node_doc: dict[str, Any],
    node_path: tuple[Any, ...],
    uuid_paths: dict[str, tuple[Any, ...]],
) -> tuple[tuple[GPU, ...], list[Problem]]:
    """The node's GPUs: explicit indices first, then entries by count fill the lowest free ones."""
    problems: list[Problem] = []
    name = node_doc["name"]
    node_pools = parse_pools(node_doc["pools"]) if "pools" in node_doc else DEFAULT_POOLS
    entries = node_doc.get("gpus", [])
    index_paths: dict[int, tuple[Any, ...]] = {}
    for entry_index, entry in enumerate(entries):
        entry_path = (*node_path, "gpus", entry_index)
        count = entry.get("count", 1)
        for key in ("index", "uuid"):
            if key in entry and count > 1:
                problems.append(
                    problem_at(
                        filename,
                        document,
                        (*entry_path, key),
                        f"{key} names one GPU but count is {count}; drop {key}, or list each GPU on its own",
                    )
                )
        if "index" in entry:
            index = entry["index"]
            if index in index_paths:
                problems.append(
                    problem_at(
                        filename, document, (*entry_path, "index"), _taken("index", index, index_paths[index])
                    )
                )
            else:
                index_paths[index] = entry_path
    if problems:
        return (), problems

    free_indices = (index for index in _naturals() if index not in index_paths)
    gpus: list[GPU] = []
    for entry_index, entry in enumerate(entries):
        entry_path = (*node_path, "gpus", entry_index)
        pools = parse_pools(entry["pools"]) if "pools" in entry else node_pools
        indices = (
            [entry["index"]]
            if "index" in entry
            else [next(free_indices) for _ in range(entry.get("count", 1))]
        )
        for index in indices:
            uuid = entry.get("uuid") or static_uuid(name, index)
            if uuid in uuid_paths:
                where = (*entry_path, "uuid") if "uuid" in entry else entry_path
                problems.append(
                    problem_at(filename, document, where, _taken("GPU uuid", uuid, uuid_paths[uuid]))
                )
                continue
            uuid_paths[uuid] = entry_path
            gpus.append(
                GPU(
                    uuid=uuid,
                    node=name,
                    index=index,
                    model=entry["model"],
                    memory_mib=int(entry["memory_mib"]),
                    pools=pools,
                    mig_capable=bool(entry.get("mig_capable", False)),
                )
            )
    return tuple(gpus), problems


def _naturals() -> Iterator[int]:
    index = 0
    while True:
        yield index
        index += 1
