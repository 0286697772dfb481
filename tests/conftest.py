"""Suite-wide options: the `gpu` and `kube` markers say plainly when they were skipped."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("KUBECONFIG"):
        skip_kube = pytest.mark.skip(
            reason="no Kubernetes cluster: KUBECONFIG is not set, kube tests skipped"
        )
        for item in items:
            if "kube" in item.keywords:
                item.add_marker(skip_kube)
