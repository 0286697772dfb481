"""Imports point downwards only (DESIGN.md, "Packages and the direction of imports").

Every module under ``spawner/`` is read with :mod:`ast`, never imported, and each ``import`` and
``from ... import`` statement anywhere in it counts: at module level, inside functions and
methods, and under ``if TYPE_CHECKING:`` (a type-only import still means one module knows the
other; the layering holds for it too, and a circle that only typing hides is still a circle).

How a statement becomes edges of the graph of ``spawner.*`` modules:

- a relative import is resolved against the importing module's package (``__init__.py`` is its
  own package), so ``from .. import job_files`` in ``spawner/service/executor/local.py`` is
  ``spawner.service.job_files``;
- the edge goes to the deepest module that exists: ``from spawner.core import quota`` depends on
  ``spawner.core.quota`` (a module), ``from spawner.core.units import GPU`` on
  ``spawner.core.units`` (``GPU`` is a name in it), ``from spawner.ledger import Ledger`` on the
  package ``spawner.ledger`` itself (its ``__init__``);
- importing ``spawner.x.y`` from outside the package ``spawner.x`` also runs ``spawner/x/__init__.py``
  first, so that is an edge too; from inside ``spawner.x`` it is not (the package is already being
  imported: its ``__init__`` gathering its own submodules is not a circle). The root ``spawner``
  package is left out: every import passes through it and it imports nothing.

Imports by name at run time (``importlib.import_module("spawner....")``) are not seen; none are used.

The rules checked, each with its own test so a failure says which one broke:

1. no import circle among ``spawner`` modules (each circle is reported with the statements that
   close it);
2. ``service`` and ``hub`` never import each other; ``magic`` imports neither (what two sides
   share lives below both: ``config``, ``core.vocabulary``, ``core.cell_bundle``);
3. each package imports only the packages below it, as :data:`MAY_IMPORT` lists.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "spawner"
"""The ``spawner`` package directory, found from here rather than by importing ``spawner``: the
walk reads the source with ``ast`` and imports none of it."""

LOWEST = {"core", "config"}
STATE_AND_MACHINES = {"inventory", "ledger", "enforce"}
SERVING = LOWEST | STATE_AND_MACHINES
MAY_IMPORT: dict[str, set[str]] = {
    # pure logic: units, vocabulary, the cell bundle, placement, quotas, the scheduler
    "core": set(),
    # what admins write in YAML: profiles, quotas, YAML problem reports
    "config": {"core"},
    # where GPUs come from, durable state, making a slice real on a machine
    "inventory": LOWEST,
    "ledger": LOWEST,
    "enforce": LOWEST,
    # the sides: the hub's spawner, the companion service, the simulator
    "hub": SERVING,
    # the companion service; it sets up the checkpoints of jobs (spawner.checkpoint, stdlib only)
    "service": SERVING | {"checkpoint"},
    "sim": SERVING,
    # the notebook side and the command line: clients of the service, never the service itself
    "client": {"core"},
    # what a job's own code imports to save and find its checkpoint: the standard library only
    "checkpoint": set(),
    "magic": {"core", "config", "client"},
    "cli": SERVING | {"sim", "client", "kube_cli"},
    # `gpuslice k8s ...`: prints the manifests the spawner and the Job executor would create
    "kube_cli": SERVING,
}
"""The ``spawner`` packages (and top-level modules) each package may import, besides itself."""

NEVER: dict[str, set[str]] = {"service": {"hub"}, "hub": {"service"}, "magic": {"service", "hub"}}
"""Side by side packages that must not import each other (DESIGN.md), checked on their own."""


@dataclass(frozen=True)
class Import:
    """One edge of the graph: ``source`` depends on ``target`` because of the statement at ``line``."""

    source: str
    target: str
    path: Path
    line: int
    statement: str

    def __str__(self) -> str:
        where = f"{self.path.relative_to(ROOT.parent)}:{self.line}"
        return f"{self.source} -> {self.target}  ({where}: {self.statement})"


def module_names() -> dict[str, Path]:
    """Every module under ``spawner/``, by dotted name (a package by its ``__init__.py``)."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def deepest_module(name: str, modules: dict[str, Path]) -> str | None:
    """The longest dotted prefix of ``name`` that is a module of ``spawner``, or None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def package_of(module: str) -> str:
    """The layer a module belongs to: ``spawner.service.api.jobs`` -> ``service``,
    ``spawner.client`` -> ``client``; the root ``spawner`` package is ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imported_names(node: ast.Import | ast.ImportFrom, module: str, path: Path) -> list[str]:
    """The absolute dotted names a statement may refer to, most specific first per name."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        package = module.split(".") if is_package(path) else module.split(".")[:-1]
        base = package[: len(package) - (node.level - 1)]
        stem = ".".join([*base, node.module] if node.module else base)
    else:
        stem = node.module or ""
    return [f"{stem}.{alias.name}" if alias.name != "*" else stem for alias in node.names]


def collect_imports() -> tuple[dict[str, Path], list[Import]]:
    modules = module_names()
    edges: dict[tuple[str, str], Import] = {}
    for source, path in modules.items():
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            statement = ast.get_source_segment(text, node) or ""
            statement = " ".join(statement.split())
            for name in imported_names(node, source, path):
                if name != "spawner" and not name.startswith("spawner."):
                    continue
                target = deepest_module(name, modules)
                if target is None:
                    continue  # a name the module does not have: importing it fails in any test
                targets = [target]
                # Importing spawner.x.y from outside spawner.x runs spawner/x/__init__.py first.
                parts = target.split(".")
                for depth in range(2, len(parts)):
                    package = ".".join(parts[:depth])
                    if not (source == package or source.startswith(package + ".")):
                        targets.append(package)
                for each in targets:
                    if each != source and each != "spawner":
                        edges.setdefault((source, each), Import(source, each, path, node.lineno, statement))
    return modules, sorted(edges.values(), key=lambda edge: (edge.source, edge.target))


MODULES, IMPORTS = collect_imports()


def strongly_connected(nodes: list[str], graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's components of more than one module (iterative: no recursion limit to meet)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return components


def one_circle(component: list[str], graph: dict[str, list[str]]) -> list[str]:
    """A shortest circle through the component's first module, as the modules along it."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in graph[node]:
                if child == start:
                    return [*paths[node], start]
                if child in members and child not in paths:
                    paths[child] = [*paths[node], child]
                    following.append(child)
        frontier = following
    raise AssertionError(f"no circle through {start} in {component}")  # a component always has one


def describe(problems: list[str], heading: str) -> str:
    return heading + "\n  " + "\n  ".join(problems)


# ------------------------------------------------------------------------------ the tests


def test_the_walk_sees_the_packages_and_their_imports():
    # A guard for the tests below: a walk that found nothing would pass them all.
    assert {package_of(name) for name in MODULES} >= set(MAY_IMPORT), "a package of DESIGN.md is missing"
    by_edge = {(edge.source, edge.target) for edge in IMPORTS}
    assert ("spawner.service.runner", "spawner.core.cell_bundle") in by_edge  # module level, absolute
    assert ("spawner.service.executor.local", "spawner.service.job_files") in by_edge  # ``from .. import``
    assert ("spawner.magic", "spawner.magic.magics") in by_edge  # inside a function
    assert ("spawner.cli", "spawner.config.profiles") in by_edge  # under TYPE_CHECKING, and in a function
    assert ("spawner.inventory.nvml", "spawner.inventory") not in by_edge  # its own package: no edge
    assert ("spawner.service.allocator", "spawner.ledger") in by_edge  # a name of the package's __init__


def test_every_package_has_a_place_in_the_layers():
    unknown = sorted({package_of(name) for name in MODULES} - set(MAY_IMPORT) - {""})
    assert not unknown, f"packages with no place in MAY_IMPORT (add them, below what they import): {unknown}"


def test_no_import_circle():
    graph: dict[str, list[str]] = defaultdict(list)
    for edge in IMPORTS:
        graph[edge.source].append(edge.target)
    nodes = sorted(MODULES)
    for node in nodes:
        graph.setdefault(node, [])
    by_edge = {(edge.source, edge.target): edge for edge in IMPORTS}
    problems = []
    for component in strongly_connected(nodes, graph):
        circle = one_circle(component, graph)
        problems.append(
            f"circle of {len(component)} module(s): {', '.join(component)}\n    one way round: "
            + " -> ".join(circle)
            + "".join(f"\n      {by_edge[pair]}" for pair in zip(circle, circle[1:], strict=False))
        )
    assert not problems, describe(
        problems,
        "import circles in spawner/ (function-level imports count; break each by moving what both "
        "sides need below them both):",
    )


@pytest.mark.parametrize("side", sorted(NEVER))
def test_side_by_side_packages_do_not_import_each_other(side):
    offenders = [
        str(edge)
        for edge in IMPORTS
        if package_of(edge.source) == side and package_of(edge.target) in NEVER[side]
    ]
    assert not offenders, describe(
        offenders,
        f"spawner.{side} imports {' or '.join(sorted(NEVER[side]))}; what both sides need goes below "
        "both (config, core.vocabulary, core.cell_bundle):",
    )


@pytest.mark.parametrize("layer", sorted(MAY_IMPORT))
def test_each_package_imports_only_what_is_below_it(layer):
    allowed = MAY_IMPORT[layer] | {layer}
    offenders = [
        str(edge)
        for edge in IMPORTS
        if package_of(edge.source) == layer and package_of(edge.target) not in allowed
    ]
    below = ", ".join(sorted(MAY_IMPORT[layer])) or "no other spawner package"
    assert not offenders, describe(offenders, f"spawner.{layer} may import only {below}:")
