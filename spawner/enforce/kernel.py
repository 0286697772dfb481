"""An IPython extension that holds PyTorch to the server's GPU slice, loaded when a kernel starts.

PyTorch reads no environment variable for a memory cap, so a kernel would otherwise fill the whole
card it shares with seven others. The server's kernelspec (``spawner/enforce/jupyter_data``) loads
this extension; it sets ``torch.cuda.set_per_process_memory_fraction`` from
``GPUSLICE_MEMORY_FRACTION`` on every visible device. Without torch, CUDA or a slice it does nothing,
quietly: a CPU-only server or a kernel without PyTorch is not an error.
"""

from __future__ import annotations

import importlib.util
import logging
import os

log = logging.getLogger(__name__)


def slice_fraction(environ: os._Environ | dict[str, str] = os.environ) -> float | None:
    """The memory fraction the server's slice allows, or None when the server holds no slice."""
    text = environ.get("GPUSLICE_MEMORY_FRACTION")
    if not text:
        return None
    try:
        fraction = float(text)
    except ValueError:
        log.warning("GPUSLICE_MEMORY_FRACTION=%r is not a number; GPU memory is not capped", text)
        return None
    return fraction if 0 < fraction <= 1 else None


def apply_torch_limit(fraction: float) -> int:
    """Cap every visible CUDA device at ``fraction`` of its memory; returns how many were capped."""
    if importlib.util.find_spec("torch") is None:
        return 0
    import torch

    if not torch.cuda.is_available():
        return 0
    for device in range(torch.cuda.device_count()):
        torch.cuda.set_per_process_memory_fraction(fraction, device)
    return torch.cuda.device_count()


def load_ipython_extension(ipython) -> None:
    """IPython's hook: apply the slice's limits once, at kernel start."""
    fraction = slice_fraction()
    if fraction is not None:
        apply_torch_limit(fraction)
