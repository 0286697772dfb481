"""What a cell needs from the notebook, found with ``ast``/``symtable`` and packed to travel.

A cell's free names are those it reads before (or without) binding them itself. Each one found in
the notebook's namespace travels by its kind: a module becomes an import line; a function or class
defined in the notebook travels by value (cloudpickle); any other value travels pickled under a
size limit. Modules of the working directory travel as source, so the job runs the code the
notebook saw even if the files change before the job starts. A value that is too big or cannot be
pickled is refused here, before anything is sent, with its name, type, size and what to do.
"""

from __future__ import annotations

import ast
import builtins
import io
import re
import symtable
import sys
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle

from spawner.core.cell_bundle import CellBundle
from spawner.core.units import describe_size

DEFAULT_MAX_VALUE_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_MODULE_BYTES = 1024 * 1024
CELL_FILENAME = "<cell>"
IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "_ih", "_oh", "_dh", "_", "__", "___"})
"""Names IPython puts in every namespace; none of them means anything in a job."""
_IPYTHON_HISTORY = re.compile(r"_i{1,3}\d*|_\d+")


class CaptureRefused(ValueError):
    """The cell cannot travel as it is; the message names each variable at fault and what to do."""


# ------------------------------------------------------------------------------ free names


@dataclass(frozen=True)
class CellNames:
    """The names a cell reads from outside (in order of first use) and the names it binds at top level."""

    free: list[str]
    assigned: list[str]


class _ModuleScopeNames(ast.NodeVisitor):
    """Names the cell reads and binds in its module scope, in the order they are evaluated.

    ``free`` collects each name read while not yet bound by the cell. Statements whose parts are
    evaluated in another order than their fields are written (assignments, loops, ``with``) are
    visited in evaluation order. Function, lambda and class bodies and comprehensions are scopes
    of their own: only what they evaluate at once (decorators, defaults, bases, a comprehension's
    first iterable) is read here; what they read later comes from :func:`_deferred_globals`.
    """

    def __init__(self) -> None:
        self.bound: set[str] = set()
        self.free: list[str] = []
        self.assigned: list[str] = []

    def load(self, name: str) -> None:
        if name not in self.bound and name not in self.free:
            self.free.append(name)

    def store(self, name: str) -> None:
        self.bound.add(name)
        if name not in self.assigned:
            self.assigned.append(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.load(node.id)
        else:
            self.store(node.id)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self.load(node.target.id)
        self.visit(node.value)
        self.visit(node.target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.visit(node.annotation)
        if node.value is not None:
            self.visit(node.value)
            self.visit(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.visit(node.target)

    def _visit_for(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self.visit(node.target)
        for statement in [*node.body, *node.orelse]:
            self.visit(statement)

    visit_For = visit_AsyncFor = _visit_for

    def _visit_with(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self.visit(item.optional_vars)
        for statement in node.body:
            self.visit(statement)

    visit_With = visit_AsyncWith = _visit_with

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.store(alias.asname or alias.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name != "*":
                self.store(alias.asname or alias.name)

    def _visit_definition(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        for decorator in node.decorator_list:
            self.visit(decorator)
        if isinstance(node, ast.ClassDef):
            for base in [*node.bases, *node.keywords]:
                self.visit(base)
        else:
            for default in [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]:
                self.visit(default)
        self.store(node.name)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _visit_definition

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for default in [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]:
            self.visit(default)

    def _visit_comprehension(self, node: ast.AST) -> None:
        self.visit(node.generators[0].iter)  # type: ignore[attr-defined]

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _visit_comprehension

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if node.name:
            self.store(node.name)
        for statement in node.body:
            self.visit(statement)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.pattern is not None:
            self.visit(node.pattern)
        if node.name:
            self.store(node.name)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self.store(node.name)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        self.generic_visit(node)
        if node.rest:
            self.store(node.rest)


def _deferred_globals(source: str) -> list[str]:
    """Global names read inside the cell's functions, classes, lambdas and comprehensions."""
    names: list[str] = []

    def walk(table: symtable.SymbolTable) -> None:
        for child in table.get_children():
            for symbol in child.get_symbols():
                if symbol.is_referenced() and symbol.is_global() and symbol.get_name() not in names:
                    names.append(symbol.get_name())
            walk(child)

    walk(symtable.symtable(source, CELL_FILENAME, "exec"))
    return names


def cell_names(source: str) -> CellNames:
    """The free and the assigned names of ``source`` (plain Python; SyntaxError as Python raises it).

    A name is free when the cell reads it before binding it (``x = x + 1`` reads ``x``), or when
    a nested scope reads it as a global and the cell never binds it at top level.
    """
    visitor = _ModuleScopeNames()
    visitor.visit(ast.parse(source, CELL_FILENAME))
    for name in _deferred_globals(source):
        visitor.load(name)
    return CellNames(free=visitor.free, assigned=visitor.assigned)


# ------------------------------------------------------------------------------- modules


def is_local_file(path: str | None, workdir: Path) -> bool:
    """Whether ``path`` is a source file of the working directory, not of an installed package."""
    if not path or not path.endswith(".py"):
        return False
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(workdir):
        return False
    installed = {Path(prefix).resolve() for prefix in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    if any(resolved.is_relative_to(prefix) for prefix in installed if prefix != workdir):
        return False
    return not ({"site-packages", "dist-packages"} & set(resolved.parts))


def module_source_path(module: types.ModuleType) -> str:
    """Where ``module`` goes under the runner's modules directory: from its name, not its location.

    ``helpers`` -> ``helpers.py``, ``pkg.sub`` -> ``pkg/sub.py``, package ``pkg`` ->
    ``pkg/__init__.py``, so that it imports by the same name wherever its file was found.
    """
    parts = module.__name__.split(".")
    if Path(module.__file__ or "").name == "__init__.py":
        return "/".join([*parts, "__init__.py"])
    return "/".join(parts) + ".py"


def local_modules(loaded: Mapping[str, Any], imported_names: Iterable[str], workdir: Path) -> dict[str, str]:
    """Source of every working-directory module the notebook has loaded or the code imports.

    The loaded ones may be needed to unpickle values defined in them; ``imported_names`` (the
    top-level names of the code's own imports) may not be loaded yet in the notebook.
    """
    modules: dict[str, str] = {}
    for name, module in list(loaded.items()):
        if name == "__main__" or name.split(".")[0] == "spawner" or not isinstance(module, types.ModuleType):
            continue  # the runner brings its own copy of this package
        if is_local_file(getattr(module, "__file__", None), workdir):
            modules[module_source_path(module)] = Path(module.__file__).read_text(encoding="utf-8")
    for name in imported_names:
        single = workdir / f"{name}.py"
        package = workdir / name
        if single.is_file():
            modules.setdefault(f"{name}.py", single.read_text(encoding="utf-8"))
        elif (package / "__init__.py").is_file():
            for file in sorted(package.rglob("*.py")):
                relative = file.relative_to(workdir).as_posix()
                modules.setdefault(relative, file.read_text(encoding="utf-8"))
    return modules


def imported_top_names(source: str) -> list[str]:
    """Top-level package names of the absolute imports in ``source``."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.split(".")[0])
    return list(dict.fromkeys(names))


def import_line(name: str, module: types.ModuleType) -> str:
    """The statement that binds ``name`` to ``module`` again in the job."""
    if name == module.__name__:
        return f"import {name}"
    return f"import {module.__name__} as {name}"


# ------------------------------------------------------------------------------- values


class _BoundedBuffer(io.RawIOBase):
    """A pickle's destination that keeps bytes up to a limit and only counts them past it.

    So measuring a 10 GB array costs no 10 GB copy: past the limit nothing more is kept.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] | None = []

    def writable(self) -> bool:
        return True

    def write(self, chunk: Any) -> int:
        length = memoryview(chunk).nbytes
        self.size += length
        if self.chunks is not None:
            if self.size > self.limit:
                self.chunks = None
            else:
                self.chunks.append(bytes(chunk))
        return length


def describe_type(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


@dataclass
class Capture:
    """Everything a cell takes with it, and the words of the manifest shown before sending."""

    imports: list[str] = field(default_factory=list)
    functions: dict[str, int] = field(default_factory=dict)
    """Notebook functions and classes by value: name -> pickled size."""
    values: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Data values: name -> (type, pickled size)."""
    modules: dict[str, str] = field(default_factory=dict)
    pickled: dict[str, Any] = field(default_factory=dict)
    """What goes into the values pickle: name -> the object itself."""

    def manifest(self, payload_size: int) -> str:
        """One line: what travels, and the payload's size."""
        parts = []
        if self.imports:
            parts.append("imports " + ", ".join(line.removeprefix("import ") for line in self.imports))
        if self.functions:
            parts.append(
                "by value "
                + ", ".join(f"{name} ({describe_size(size)})" for name, size in self.functions.items())
            )
        if self.values:
            parts.append(
                "values "
                + ", ".join(
                    f"{name} ({kind}, {describe_size(size)})" for name, (kind, size) in self.values.items()
                )
            )
        if self.modules:
            parts.append(
                "local modules "
                + ", ".join(
                    f"{path} ({describe_size(len(text.encode()))})" for path, text in self.modules.items()
                )
            )
        return " · ".join([*parts, f"payload {describe_size(payload_size)}"])


def defined_in_notebook(value: Any) -> bool:
    """A function or class whose home is the notebook itself, so it can only travel by value."""
    return isinstance(value, types.FunctionType | type) and getattr(value, "__module__", None) == "__main__"


def capture(
    names: Iterable[str],
    namespace: Mapping[str, Any],
    *,
    workdir: Path,
    code_imports: Iterable[str] = (),
    loaded_modules: Mapping[str, Any] | None = None,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    max_module_bytes: int = DEFAULT_MAX_MODULE_BYTES,
) -> Capture:
    """Sort the free ``names`` found in ``namespace`` into imports, by-value code, data and modules.

    Raises :class:`CaptureRefused` naming every value that is too big or cannot be pickled.
    """
    taken = Capture()
    refusals: list[str] = []
    for name in names:
        if name in IPYTHON_NAMES or _IPYTHON_HISTORY.fullmatch(name) or name not in namespace:
            continue
        value = namespace[name]
        if isinstance(value, types.ModuleType):
            if value.__name__ != "__main__":
                taken.imports.append(import_line(name, value))
            continue
        if value is getattr(builtins, name, object()):
            continue
        buffer = _BoundedBuffer(max_value_bytes)
        try:
            cloudpickle.CloudPickler(buffer, protocol=5).dump(value)
        except Exception as error:  # whatever pickling raises, the user needs the same advice
            refusals.append(
                f"{name} ({describe_type(value)}, {describe_size(sys.getsizeof(value))}) cannot be pickled: "
                f"{error}. Create it inside the cell instead (or save what it holds to a file and "
                "load it in the cell)."
            )
            continue
        if buffer.chunks is None:
            refusals.append(
                f"{name} ({describe_type(value)}, {describe_size(buffer.size)}) is over the "
                f"{describe_size(max_value_bytes)} limit for one value. Save it to a file (e.g. "
                "np.save, torch.save, df.to_parquet) and load it inside the cell, or create it "
                "inside the cell."
            )
            continue
        taken.pickled[name] = value
        if defined_in_notebook(value):
            taken.functions[name] = buffer.size
        else:
            taken.values[name] = (describe_type(value), buffer.size)
    loaded = sys.modules if loaded_modules is None else loaded_modules
    taken.modules = local_modules(loaded, code_imports, workdir)
    for path, text in taken.modules.items():
        size = len(text.encode())
        if size > max_module_bytes:
            refusals.append(
                f"local module {path} is {describe_size(size)}, over the {describe_size(max_module_bytes)} "
                "limit for one module; keep data out of source files and read it from a file in the cell."
            )
    if refusals:
        raise CaptureRefused(
            "%%submit: nothing was sent, because "
            + ("these values cannot travel with the cell:\n  " if len(refusals) > 1 else "")
            + "\n  ".join(refusals)
        )
    return taken


def pack(
    taken: Capture,
    *,
    source: str,
    filename: str,
    mode: str,
    returns: list[str],
    out_given: bool,
    argv: list[str] | None = None,
) -> bytes:
    """The payload the service carries to the runner: a :class:`CellBundle` as bytes."""
    return CellBundle(
        source=source,
        filename=filename,
        mode=mode,
        argv=list(argv or []),
        imports=taken.imports,
        modules=taken.modules,
        values=cloudpickle.dumps(taken.pickled, protocol=5),
        returns=returns,
        out_given=out_given,
    ).to_bytes()
