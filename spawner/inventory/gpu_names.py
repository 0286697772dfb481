"""Short model names from the long names NVML and GPU feature discovery report.

Profiles and quotas name GPU models ("A100-80GB"), so every source must spell one card the same
way: "NVIDIA A100-SXM4-80GB" (NVML) and "NVIDIA-A100-SXM4-80GB" (the Kubernetes label) both become
"A100-80GB". Form factor (SXM, PCIe) and memory type do not change what a slice can do; memory size
does, so it stays.
"""

from __future__ import annotations

import re

_VENDOR_WORDS = {"nvidia", "tesla", "geforce", "quadro"}
_FORM_FACTOR = re.compile(r"^(sxm\d*|pcie|hbm\d*e?|shared)$", re.IGNORECASE)
_MEMORY_SIZE = re.compile(r"^\d+gb$", re.IGNORECASE)
_MIG_PROFILE = re.compile(r"^\d+g\.\d+gb$", re.IGNORECASE)


def normalise_model(raw_name: str) -> str:
    """'NVIDIA H200' -> 'H200'; 'NVIDIA A100-SXM4-80GB' -> 'A100-80GB'; unknown shapes pass through.

    A MIG device advertised as one GPU (GPU feature discovery's single strategy, e.g.
    "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb") keeps its profile: "A100-40GB MIG-1g.5gb".
    """
    tokens = [token for token in re.split(r"[\s\-_]+", raw_name.strip()) if token]
    base: list[str] = []
    memory = ""
    mig_profile = ""
    for token in tokens:
        if token.lower() in _VENDOR_WORDS and not base:
            continue
        if _FORM_FACTOR.match(token) or token.upper() == "MIG":
            continue
        if _MIG_PROFILE.match(token):
            mig_profile = token.lower()
        elif _MEMORY_SIZE.match(token) and base and not memory:
            memory = token.upper()
        else:
            base.append(token)
    if not base:
        return raw_name.strip()
    model = " ".join(base)
    if memory:
        model += f"-{memory}"
    if mig_profile:
        model += f" MIG-{mig_profile}"
    return model
