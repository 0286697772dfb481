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
            # The marker only: `"kube" in item.keywords` would also match every test under
            # tests/kube/, whose manifest tests need no cluster and whose control-plane tests
            # start their own (tests/kube/control_plane.py) or skip saying why.
            if item.get_closest_marker("kube"):
                item.add_marker(skip_kube)
