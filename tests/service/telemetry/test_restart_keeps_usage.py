"""A service stopped in the middle of a day writes the figures it had not written yet, and its
successor adds to them: a real hub restarting its real service (SIGTERM, as at a redeploy)."""

from __future__ import annotations

import csv
import io
import os
import signal
import time
import uuid

import pytest
from harness.service_hubs import KEEP_LEASES, service_hub

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    # Written only at stop: the rollup never reaches the ledger while the service runs.
    args = [KEEP_LEASES, "--GPUMonitor.interval_s=0.5", "--GPUMonitor.flush_interval_s=86400"]
    process = service_hub(tmp_path_factory.mktemp("restart-usage-hub"), service_args=args)
    try:
        process.start()
    except Exception:
        process.stop()
        raise
    yield process
    process.stop()


def alice_allocated_hours(hub, admin) -> float:
    answer = admin.get(hub.api + "usage?format=csv", timeout=10)
    assert answer.status_code == 200, answer.text
    rows = [row for row in csv.DictReader(io.StringIO(answer.text)) if row["user"] == "alice"]
    return sum(float(row["allocated_gpu_hours"]) for row in rows)


def counted_seconds(hub, admin) -> float:
    """The GPU-seconds the running service has counted (its Prometheus counter, in memory)."""
    text = admin.get(hub.api + "metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gpuslice_allocated_gpu_seconds_total{")
    )


def test_a_restart_loses_none_of_the_figures_sampled_before_it(hub):
    service = hub.client(hub.service_token)
    body = {
        "lease_id": f"test-{uuid.uuid4().hex}",
        "user": "alice",
        "holder": "alice/",
        "profile": "a100-1-8",
    }
    assert service.post(hub.api + "leases", json=body, timeout=30).status_code == 201
    admin = hub.client(hub.token_for("erin"))
    deadline = time.monotonic() + 60
    while (counted := counted_seconds(hub, admin)) < 0.25:  # two seconds of a 1/8 slice
        assert time.monotonic() < deadline, "the monitor counted nothing for alice's slice"
        time.sleep(0.5)
    assert alice_allocated_hours(hub, admin) == 0.0  # counted, but not written yet

    old_pid = hub.service_pid()
    os.kill(old_pid, signal.SIGTERM)
    hub.wait_for_service_restart(old_pid)

    # Everything counted before the stop is in the ledger (and the successor adds to it); the
    # export rounds to a millionth of an hour (3.6 ms) per row.
    assert alice_allocated_hours(hub, admin) * 3600 >= counted - 0.01
