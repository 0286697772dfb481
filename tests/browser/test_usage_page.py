"""The admins' usage page in a real browser: the three plots, the group table, the CSV link, and
the sentence that says the figures of simulated GPUs are their allocation.

The hub is the embedded default (hub_config.py) with its gpuslice service on two simulated A100s;
its GPU monitor samples every half second, so a slice alice holds shows within seconds. The page
is screenshotted for the README (docs/usage-page.png): what it shows is what this test produced.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest
import requests
from harness import HubProcess

from .conftest import login

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO_ROOT / "docs" / "usage-page.png"
ADMIN_PASSWORD = "admin-password-for-the-browser-tests-only"
SERVICE = "/services/gpuslice/"
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    env = {
        "GPUSLICE_INVENTORY": "simulated",
        "GPUSLICE_SIMULATED_GPUS": "2",
        "GPUSLICE_TRAIN_GPUS": "1",
        "GPUSLICE_GROUPS": "researchers=alice",
        "GPUSLICE_ADMIN_USERS": "dana",
        "GPUSLICE_ADMIN_PASSWORD": ADMIN_PASSWORD,
    }
    args = [
        "--GPUMonitor.interval_s=0.5",
        "--GPUMonitor.flush_interval_s=1",
        "--LeaseReconciler.grace_seconds=3600",
    ]
    process = HubProcess(tmp_path_factory.mktemp("usage-page-hub"), env, service_args=args).start(timeout=90)
    yield process
    process.stop()


def test_the_usage_page_plots_the_figures_and_says_they_are_allocations(hub, new_page):
    session = requests.Session()
    session.headers["Authorization"] = f"token {hub.service_token}"
    body = {
        "lease_id": f"test-{uuid.uuid4().hex}",
        "user": "alice",
        "holder": "alice/",
        "profile": "a100-1-4",
    }
    granted = session.post(f"{hub.url}{SERVICE}api/v1/leases", json=body, timeout=30)
    assert granted.status_code in (200, 201), granted.text

    page = new_page()
    login(page, hub, "dana", ADMIN_PASSWORD)
    page.goto(f"{hub.url}{SERVICE}admin")
    page.wait_for_url(re.compile(rf"{re.escape(SERVICE)}admin"), timeout=WAIT_MS)
    page.locator("header nav a", has_text="Usage").click()
    page.wait_for_url(re.compile(rf"{re.escape(SERVICE)}usage"), timeout=WAIT_MS)
    researchers = page.locator('#group-table tr[data-group="researchers"]')
    deadline = time.monotonic() + 60
    while researchers.count() == 0:
        assert time.monotonic() < deadline, "the usage page never showed alice's group"
        page.wait_for_timeout(500)
        page.reload()

    assert "allocation" in page.locator("#simulated-notice").inner_text()
    for plot in ("#heat-map", "#group-bars", "#busy-lines"):
        assert page.locator(f"svg{plot}").count() == 1, plot
    # Fourteen days of 24 hours; the current hour of today is coloured (sampled), most are not.
    cells = page.locator("#heat-map rect")
    assert cells.count() == 14 * 24
    assert page.locator('#heat-map rect:not([fill="#eeeeee"])').count() >= 1
    assert page.locator("#group-bars title", has_text="researchers").count() == 2
    cells_text = researchers.locator("td").all_inner_texts()
    assert cells_text[0] == "researchers" and float(cells_text[1]) >= 0 and cells_text[3] == "100%"
    csv_link = page.locator("#usage-csv").get_attribute("href")
    assert csv_link.startswith(f"{SERVICE}api/v1/usage?from=") and csv_link.endswith("&format=csv")
    answer = page.request.get(f"{hub.url}{csv_link}")
    assert answer.status == 200 and "holder," in answer.text() and ",alice,researchers," in answer.text()

    page.set_viewport_size({"width": 1280, "height": 900})
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.read_bytes().startswith(b"\x89PNG")


def test_a_user_who_is_not_an_admin_is_refused_with_a_sentence(hub, new_page):
    page = new_page()
    login(page, hub, "bob")
    response = page.goto(f"{hub.url}{SERVICE}usage")
    assert response.status == 403
    assert "The gpuslice usage page is for hub admins" in page.locator("#error-message").inner_text()
