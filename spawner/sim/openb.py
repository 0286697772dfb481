"""Reading the openb GPU-sharing traces (Alibaba cluster-trace-gpu-v2023) into core units."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from spawner.core.units import GPU, MILLI_PER_GPU, Node, SliceRequest
from spawner.core.vocabulary import POOLS

GPU_MEMORY_MIB = {
    "P100": 16384,
    "T4": 15360,
    "V100M16": 16384,
    "V100M32": 32768,
    "A10": 24576,
    "G2": 32768,
    "G3": 49152,
}
"""GPU memory by openb model name. The trace does not give it; the anonymised models G2/G3 get a
plausible figure. Only fractions matter to the replay, since memory follows the fraction."""

DEFAULT_GPU_MEMORY_MIB = 16384


class TraceError(ValueError):
    """A trace file that cannot be read as an openb node or pod list."""


@dataclass(frozen=True, slots=True)
class TracePod:
    """One task of a pod list: its name and what it asks for."""

    name: str
    request: SliceRequest


def _rows(path: Path, required: set[str]) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = required - set(reader.fieldnames or ())
            if missing:
                raise TraceError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
            return list(reader)
    except OSError as error:
        raise TraceError(f"{path}: {error.strerror or error}") from error


def _int(path: Path, line: int, row: dict[str, str], column: str) -> int:
    text = (row.get(column) or "").strip()
    try:
        return int(text or 0)
    except ValueError:
        raise TraceError(f"{path}:{line}: column {column!r}: expected an integer, got {text!r}") from None


def load_nodes(path: str | Path) -> list[Node]:
    """Nodes of an openb node list (``sn, cpu_milli, memory_mib, gpu, model``)."""
    path = Path(path)
    nodes = []
    for line, row in enumerate(_rows(path, {"sn", "cpu_milli", "memory_mib", "gpu", "model"}), start=2):
        name = row["sn"]
        model = row["model"] or "none"
        memory = GPU_MEMORY_MIB.get(model, DEFAULT_GPU_MEMORY_MIB)
        gpus = tuple(
            GPU(
                uuid=f"{name}/gpu{index}",
                node=name,
                index=index,
                model=model,
                memory_mib=memory,
                pools=frozenset(POOLS),
                simulated=True,
            )
            for index in range(_int(path, line, row, "gpu"))
        )
        nodes.append(
            Node(
                name=name,
                cpu_milli=_int(path, line, row, "cpu_milli"),
                memory_mib=_int(path, line, row, "memory_mib"),
                gpus=gpus,
            )
        )
    return nodes


def load_pods(path: str | Path) -> list[TracePod]:
    """Tasks of an openb pod list as slice requests (``gpu_spec`` is optional, as in multigpu30)."""
    path = Path(path)
    pods = []
    required = {"name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli"}
    for line, row in enumerate(_rows(path, required), start=2):
        num_gpu = _int(path, line, row, "num_gpu")
        gpu_milli = _int(path, line, row, "gpu_milli")
        spec = (row.get("gpu_spec") or "").strip()
        models = frozenset(model for model in spec.split("|") if model)
        common = dict(
            cpu_milli=_int(path, line, row, "cpu_milli"),
            memory_mib=_int(path, line, row, "memory_mib"),
            gpu_models=models,
        )
        if num_gpu == 1 and 0 < gpu_milli < MILLI_PER_GPU:
            request = SliceRequest(milli_gpu=gpu_milli, **common)
        elif num_gpu >= 1:
            request = SliceRequest(gpus=num_gpu, **common)
        else:
            request = SliceRequest(cpu_milli=common["cpu_milli"], memory_mib=common["memory_mib"])
        pods.append(TracePod(name=row["name"], request=request))
    return pods


# ----------------------------------------------------------------------- published figures
#
# The FGD artifact (Weng et al., USENIX ATC '23) publishes, per openb trace and policy, the GPU
# allocation ratio at every arrived-workload percentage for seeds 42-51; the shared data holds
# their 10-seed means (``allocation_means.csv``: ``trace, policy, seeds, alloc_pct_at_0 .. _130``).

ARTIFACT_POLICIES = {"06-FGD": "fgd", "05-BestFit": "best-fit", "04-GpuPacking": "packing"}
"""The artifact's policies that ours reproduce, by the artifact's name."""

COLUMN_PREFIX = "alloc_pct_at_"

PublishedCurves = dict[tuple[str, str], dict[int, float]]
"""(trace, our policy name) -> {arrived %: allocation %}."""


def load_published(path: str | Path) -> PublishedCurves:
    """The published curves of the policies in ``ARTIFACT_POLICIES``; raises ``TraceError`` for a
    file that is not such a table (naming file:line and column)."""
    path = Path(path)
    curves: PublishedCurves = {}
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            columns = [name for name in reader.fieldnames or () if name.startswith(COLUMN_PREFIX)]
            if not {"trace", "policy"} <= set(reader.fieldnames or ()) or not columns:
                raise TraceError(f"{path}: expected columns trace, policy and {COLUMN_PREFIX}<percent>")
            for line, row in enumerate(reader, start=2):
                policy = ARTIFACT_POLICIES.get(row["policy"])
                if policy is None:
                    continue
                curve = {}
                for column in columns:
                    text = (row.get(column) or "").strip()
                    try:
                        curve[int(column[len(COLUMN_PREFIX) :])] = float(text)
                    except ValueError:
                        raise TraceError(
                            f"{path}:{line}: column {column!r}: expected a number, got {text!r}"
                        ) from None
                curves[(row["trace"], policy)] = curve
    except OSError as error:
        raise TraceError(f"{path}: {error.strerror or error}") from error
    return curves
