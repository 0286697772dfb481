"""GET usage (JSON and CSV) against a real hub and service whose monitor samples its simulated GPUs."""

from __future__ import annotations

import csv
import io
import time
import uuid

import pytest
from harness.service_hubs import KEEP_LEASES, service_hub

from spawner.service.telemetry.usage import CSV_COLUMNS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def usage_hub(tmp_path_factory):
    args = [KEEP_LEASES, "--GPUMonitor.interval_s=0.2", "--GPUMonitor.flush_interval_s=0.5"]
    hub = service_hub(tmp_path_factory.mktemp("usage-hub"), service_args=args)
    try:
        hub.start()
    except Exception:
        hub.stop()
        raise
    yield hub
    hub.stop()


def holder_rows(hub, token: str, user: str) -> list[dict]:
    answer = hub.client(token).get(hub.api + "usage?format=csv", timeout=10)
    assert answer.status_code == 200, answer.text
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    return [row for row in rows if row["record"] == "holder" and row["user"] == user]


def test_a_held_slice_shows_in_the_csv_as_allocation_read_as_use(usage_hub):
    hub = usage_hub
    service = hub.client(hub.service_token)
    body = {
        "lease_id": f"test-{uuid.uuid4().hex}",
        "user": "alice",
        "holder": "alice/",
        "profile": "a100-1-8",
    }
    created = service.post(hub.api + "leases", json=body, timeout=30)
    assert created.status_code in (200, 201), created.text
    admin = hub.token_for("erin")

    deadline = time.monotonic() + 60
    rows = []
    while not rows or float(rows[0]["allocated_gpu_hours"]) == 0:
        assert time.monotonic() < deadline, "the monitor wrote no figures for alice's slice"
        time.sleep(0.5)
        rows = holder_rows(hub, admin, "alice")

    [row] = rows
    assert row["class"] == "interactive" and row["measured"] == "false"
    assert row["used_gpu_hours"] == row["allocated_gpu_hours"]  # simulated: the allocation is the use
    answer = hub.client(admin).get(hub.api + "usage?format=csv", timeout=10)
    assert answer.headers["Content-Type"].startswith("text/csv")
    assert answer.text.splitlines()[0] == ",".join(CSV_COLUMNS)
    gpu_rows = [row for row in csv.DictReader(io.StringIO(answer.text)) if row["record"] == "gpu"]
    assert gpu_rows and all(row["measured"] == "false" for row in gpu_rows)
    figures = hub.client(admin).get(hub.api + "usage", timeout=10).json()
    assert figures["measured"] is False and any(holder["user"] == "alice" for holder in figures["holders"])


def test_only_admins_read_usage_and_bad_ranges_are_refused(usage_hub):
    hub = usage_hub
    user = hub.client(hub.token_for("alice")).get(hub.api + "usage", timeout=10)
    assert user.status_code == 403 and "custom:gpuslice:admin" in user.json()["message"]
    admin = hub.client(hub.token_for("erin"))
    for query, words in (
        ("format=xml", "format: 'xml'"),
        ("from=2024-13-01", "from: '2024-13-01' is not a day"),
        ("from=2024-05-10&to=2024-05-01", "after to"),
        ("from=2020-01-01&to=2024-01-01", "at most 400"),
    ):
        answer = admin.get(hub.api + f"usage?{query}", timeout=10)
        assert answer.status_code == 400 and words in answer.json()["message"], (query, answer.text)


def test_a_user_reads_their_own_gpu_notices_and_only_theirs(usage_hub):
    hub = usage_hub
    alice = hub.client(hub.token_for("alice"))
    own = alice.get(hub.api + "notices", timeout=10)
    assert own.status_code == 200 and own.json() == {"monitoring": True, "notices": []}
    other = alice.get(hub.api + "notices?user=bob", timeout=10)
    assert other.status_code == 403 and "only their own" in other.json()["message"]
    admin = hub.client(hub.token_for("erin")).get(hub.api + "notices?user=bob", timeout=10)
    assert admin.status_code == 200 and admin.json()["notices"] == []
