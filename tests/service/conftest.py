"""Fixtures: one real hub with the gpuslice service for the whole package, and its clients."""

from __future__ import annotations

import pytest
from harness.service_hubs import service_hub


@pytest.fixture(scope="package")
def hub(tmp_path_factory):
    process = service_hub(tmp_path_factory.mktemp("service-hub"))
    try:
        process.start()
    except Exception:
        process.stop()
        raise
    yield process
    process.stop()


@pytest.fixture
def service(hub):
    """The service's own token, as the spawner uses it; every lease is released after the test."""
    session = hub.client(hub.service_token)
    yield session
    for lease in session.get(hub.api + "leases", timeout=10).json()["leases"]:
        session.delete(hub.api + f"leases/{lease['id']}", timeout=10).raise_for_status()
