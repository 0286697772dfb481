"""Where the shared openb traces live: beside the repository, never copied into it."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
OPENB_ENV = "GPUSLICE_OPENB_DIR"


def openb_dir() -> Path:
    """``$GPUSLICE_OPENB_DIR``, else ``../shared/data/openb`` from the repository root."""
    configured = os.environ.get(OPENB_ENV)
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "data" / "openb"


def openb_file(name: str) -> Path:
    return openb_dir() / name


OPENB_NODES = "openb_node_list_gpu_node.csv"
OPENB_TRACES = ("default", "gpushare40", "gpuspec20", "multigpu30")


def openb_pods(trace: str) -> Path:
    return openb_file(f"openb_pod_list_{trace}.csv")


FGD_PUBLISHED_ENV = "GPUSLICE_FGD_PUBLISHED_DIR"
FGD_PUBLISHED_MEANS = "allocation_means.csv"


def fgd_published_file() -> Path:
    """The FGD artifact's published 10-seed means: ``$GPUSLICE_FGD_PUBLISHED_DIR``, else
    ``../shared/data/fgd-published`` from the repository root."""
    configured = os.environ.get(FGD_PUBLISHED_ENV)
    folder = Path(configured) if configured else REPO_ROOT.parent / "shared" / "data" / "fgd-published"
    return folder / FGD_PUBLISHED_MEANS


def trace_name(pods_path: str | Path) -> str:
    """The trace an openb pod list holds (``openb_pod_list_gpushare40.csv`` -> ``gpushare40``)."""
    stem = Path(pods_path).stem
    prefix = "openb_pod_list_"
    return stem[len(prefix) :] if stem.startswith(prefix) else stem
