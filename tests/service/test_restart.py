"""Leases live in the ledger: a service that dies and comes back has lost none of them."""

from __future__ import annotations

import os
import signal
import uuid

import pytest

pytestmark = pytest.mark.slow


def test_a_restarted_service_keeps_every_lease(hub, service):
    asked = [
        {"lease_id": f"restart-{uuid.uuid4().hex}", "user": user, "holder": f"{user}/", **what}
        for user, what in [
            ("alice", {"profile": "a100-1-8"}),
            ("bob", {"request": {"milli_gpu": 500}}),
            ("carol", {"request": {"milli_gpu": 250}}),
        ]
    ]
    for body in asked:
        assert service.post(hub.api + "leases", json=body, timeout=30).status_code == 201
    leases_before = service.get(hub.api + "leases", timeout=10).json()["leases"]
    gpus_before = service.get(hub.api + "gpus", timeout=10).json()["gpus"]

    old_pid = hub.service_pid()
    assert old_pid is not None, hub.log()
    os.kill(old_pid, signal.SIGKILL)  # no chance to tidy up: the ledger alone must remember
    # The hub polls its managed services (every 30 s) and starts one that exited again.
    hub.wait_for_service_restart(old_pid)

    assert service.get(hub.api + "leases", timeout=10).json()["leases"] == leases_before
    assert service.get(hub.api + "gpus", timeout=10).json()["gpus"] == gpus_before
    again = service.post(hub.api + "leases", json=asked[0], timeout=30)
    assert again.status_code == 200, again.text
    assert again.json()["lease"] == leases_before[0] | {"released_at": None}
