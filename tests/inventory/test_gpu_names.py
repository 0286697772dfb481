"""Short model names: every source must spell one card the way profiles and quotas do."""

from __future__ import annotations

import pytest

from spawner.inventory import normalise_model


@pytest.mark.parametrize(
    ("raw", "model"),
    [
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
        ("NVIDIA A100-PCIE-40GB", "A100-40GB"),
        ("NVIDIA A100 80GB PCIe", "A100-80GB"),
        ("NVIDIA H100 80GB HBM3", "H100-80GB"),
        ("NVIDIA H100 PCIe", "H100"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA GH200 480GB", "GH200-480GB"),
        ("Tesla V100-SXM2-16GB", "V100-16GB"),
        ("Tesla T4", "T4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("NVIDIA RTX A6000", "RTX A6000"),
        ("Quadro RTX 8000", "RTX 8000"),
        # GPU feature discovery's label spelling of the same cards
        ("NVIDIA-A100-SXM4-80GB", "A100-80GB"),
        ("NVIDIA-H100-80GB-HBM3", "H100-80GB"),
        ("NVIDIA-L4-SHARED", "L4"),
        ("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", "A100-40GB MIG-1g.5gb"),
        # Nothing to shorten: kept as given
        ("NVIDIA", "NVIDIA"),
        ("  Custom Accelerator  ", "Custom Accelerator"),
    ],
)
def test_normalise_model(raw, model):
    assert normalise_model(raw) == model
