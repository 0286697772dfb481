"""Synthetic workloads unlike the openb traces, to check that a policy was not fitted to them.

Each mix is a different shape of demand a lab might put on a cluster: notebook-style eighth and
quarter slices, a training-heavy mix of gangs, and a random mix drawn from a seed. Task CPU and
memory scale with the GPU share, with noise, as they do in real pods.
"""

from __future__ import annotations

import numpy as np

from spawner.core.units import SliceRequest

from .openb import TracePod

MIXES: dict[str, list[tuple[int, int, float]]] = {
    # (milli_gpu per GPU, GPU count, share of tasks)
    "notebooks": [(125, 1, 0.45), (250, 1, 0.25), (500, 1, 0.15), (1000, 1, 0.1), (1000, 2, 0.05)],
    "training": [(1000, 1, 0.3), (1000, 2, 0.2), (1000, 4, 0.2), (1000, 8, 0.1), (500, 1, 0.2)],
    "odd-slices": [(300, 1, 0.3), (700, 1, 0.3), (450, 1, 0.2), (1000, 1, 0.1), (1000, 4, 0.1)],
}


def random_mix(seed: int) -> list[tuple[int, int, float]]:
    rng = np.random.default_rng(seed)
    shapes = [(int(rng.integers(1, 20)) * 50, 1, 0.0) for _ in range(6)]
    shapes += [(1000, int(count), 0.0) for count in rng.choice([1, 2, 4, 8], size=3, replace=False)]
    weights = rng.dirichlet(np.ones(len(shapes)))
    return [(milli, count, float(weight)) for (milli, count, _), weight in zip(shapes, weights, strict=True)]


def synthetic_pods(mix: list[tuple[int, int, float]], count: int, seed: int) -> list[TracePod]:
    """``count`` tasks drawn from ``mix``, with CPU and memory that follow the GPU share."""
    rng = np.random.default_rng(seed)
    shares = np.array([share for _, _, share in mix])
    picks = rng.choice(len(mix), size=count, p=shares / shares.sum())
    pods = []
    for number, pick in enumerate(picks):
        milli, gpus, _ = mix[pick]
        gpu_share = milli * gpus / 1000
        cpu = int(max(1, round(gpu_share * rng.choice([4, 8, 12]))) * 1000)
        memory = int(max(1, round(gpu_share * rng.choice([16, 32, 48]))) * 1024)
        if gpus == 1 and milli < 1000:
            request = SliceRequest(milli_gpu=milli, cpu_milli=cpu, memory_mib=memory)
        else:
            request = SliceRequest(gpus=gpus, cpu_milli=cpu, memory_mib=memory)
        pods.append(TracePod(name=f"synthetic-{number:05d}", request=request))
    return pods
