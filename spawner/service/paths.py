"""Where the service keeps its state: ``$GPUSLICE_STATE_DIR``, else ``./var``."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    return Path(os.environ.get("GPUSLICE_STATE_DIR", "var")).resolve()
