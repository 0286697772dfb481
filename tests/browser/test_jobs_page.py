"""Issue 4's pages in a real browser: my jobs with a live log and Cancel, and the admins' view.

The hub is the embedded default (hub_config.py) with its gpuslice service, two simulated A100s of
which the second is the training GPU, alice in the group researchers, and dana a hub admin. Alice
submits her jobs through the REST API with a token of her own, as the CLI and the magic do; she then
follows them in Chromium from the hub's Services menu.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import requests

from .conftest import login, start_hub

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
JOBS_SCREENSHOT = REPO_ROOT / "docs" / "jobs-page.png"
ADMIN_SCREENSHOT = REPO_ROOT / "docs" / "admin-page.png"
ADMIN_PASSWORD = "admin-password-for-the-browser-tests-only"  # 32+ characters, as the hub demands
SERVICE = "/services/gpuslice/"
WAIT_MS = 60_000

TICKS = """\
import time
for tick in range(240):
    print(f"tick {tick}", flush=True)
    time.sleep(0.5)
"""

HELLO = 'print("hello from a finished job")\n'


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    process = start_hub(
        tmp_path_factory.mktemp("jobs-page-hub"),
        {
            "GPUSLICE_SIMULATED_GPUS": "2",
            "GPUSLICE_TRAIN_GPUS": "1",
            "GPUSLICE_GROUPS": "researchers=alice",
            "GPUSLICE_ADMIN_USERS": "dana",
            "GPUSLICE_ADMIN_PASSWORD": ADMIN_PASSWORD,
        },
    )
    yield process
    process.stop()


class JobsAPI:
    """alice's REST client: a token she made on the hub, as `gpuslice` in her server would use."""

    def __init__(self, hub, user: str):
        hub_session = hub.login(user)
        made = hub_session.post(
            f"{hub.url}/hub/api/users/{user}/tokens", json={"note": "jobs page test"}, timeout=30
        )
        assert made.status_code == 201, made.text
        self.api = f"{hub.url}{SERVICE}api/v1/"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {made.json()['token']}"

    def submit(self, name: str, script: str) -> dict:
        body = {"name": name, "script": script, "gpus": 1, "time_limit": "10m"}
        response = self.session.post(self.api + "jobs", json=body, timeout=30)
        assert response.status_code == 201, response.text
        return response.json()["job"]

    def job(self, job_id: str) -> dict:
        response = self.session.get(self.api + f"jobs/{job_id}", timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["job"]

    def wait_for(self, job_id: str, states: tuple[str, ...], timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["state"] in states:
                return job
            time.sleep(0.3)
        pytest.fail(f"job {job_id} never reached {states}: {self.job(job_id)}")


@pytest.fixture(scope="module")
def alice_api(hub) -> JobsAPI:
    return JobsAPI(hub, "alice")


@pytest.fixture(scope="module")
def jobs(alice_api) -> dict[str, dict]:
    """A finished job, then a long one running on the training GPU and printing twice a second."""
    finished = alice_api.submit("hello", HELLO)
    alice_api.wait_for(finished["id"], ("succeeded",))
    ticking = alice_api.submit("train <resnet> & tick", TICKS)
    running = alice_api.wait_for(ticking["id"], ("running",))
    return {"finished": finished, "running": running}


def last_tick(text: str) -> int:
    ticks = [int(number) for number in re.findall(r"^tick (\d+)$", text, re.M)]
    return max(ticks, default=-1)


def open_my_jobs_from_the_hub_menu(page, hub) -> None:
    page.goto(f"{hub.url}/hub/home")
    services_menu = page.locator("nav .dropdown-toggle", has_text="Services")
    services_menu.click()
    link = page.locator("nav a.dropdown-item", has_text="gpuslice")
    assert link.get_attribute("href") == SERVICE
    link.click()
    # The service's OAuth: to the hub's authorize URL, straight back (no confirmation page), and on
    # from the service's root to the jobs page.
    page.wait_for_url(re.compile(rf"{re.escape(SERVICE)}jobs"), timeout=WAIT_MS)


def test_the_hub_menu_leads_to_my_jobs_where_the_log_follows_live(hub, jobs, new_page):
    running, finished = jobs["running"], jobs["finished"]
    page = new_page()
    login(page, hub, "alice")
    open_my_jobs_from_the_hub_menu(page, hub)
    assert page.locator("#user-name").inner_text() == "alice"

    row = page.locator(f'tr[data-job-id="{running["id"]}"]')
    row.wait_for(state="visible", timeout=WAIT_MS)
    # The name is shown as text, never as markup.
    assert row.locator(".job-name").inner_text() == "train <resnet> & tick"
    assert row.locator(".job-state").inner_text() == "running"
    assert row.locator(".job-gpus").inner_text() == "1"
    finished_row = page.locator(f'tr[data-job-id="{finished["id"]}"]')
    assert finished_row.locator(".job-state").inner_text() == "succeeded"

    # Mark this document: if anything reloaded the page, the mark would be gone.
    page.evaluate("window.gpusliceTestMark = 'same page'")
    row.locator(".job-id a").click()
    detail = page.locator("#job-detail")
    detail.wait_for(state="visible")
    assert page.locator("#detail-state").inner_text() == "running"
    log = page.locator("#job-log")
    page.wait_for_function(
        "() => /^tick [0-9]+$/m.test(document.getElementById('job-log').textContent)", timeout=WAIT_MS
    )
    first_seen = last_tick(log.text_content())
    # Lines the job prints afterwards arrive by themselves, a few seconds later.
    page.wait_for_function(
        f"""() => {{
            const ticks = [...document.getElementById('job-log').textContent.matchAll(/^tick ([0-9]+)$/mg)];
            return ticks.some(match => Number(match[1]) >= {first_seen + 6});
        }}""",
        timeout=WAIT_MS,
    )
    assert page.evaluate("window.gpusliceTestMark") == "same page"
    text = log.text_content()
    ticks = [int(number) for number in re.findall(r"^tick (\d+)$", text, re.M)]
    assert ticks == list(range(len(ticks))), "log lines are missing or repeated"
    assert page.locator("#log-status").inner_text() == "(following)"
    # The runtime counts up on the page while the job runs.
    row_runtime = row.locator(".job-runtime").inner_text()
    assert re.fullmatch(r"(\d+m )?\d+s", row_runtime), row_runtime

    page.set_viewport_size({"width": 1280, "height": 820})
    JOBS_SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(JOBS_SCREENSHOT), full_page=True)
    assert JOBS_SCREENSHOT.read_bytes().startswith(b"\x89PNG")


def test_the_admin_page_shows_who_holds_each_gpu_and_the_groups_usage(hub, jobs, new_page):
    running = jobs["running"]
    page = new_page()
    login(page, hub, "dana", ADMIN_PASSWORD)
    page.goto(f"{hub.url}{SERVICE}jobs")
    page.wait_for_url(re.compile(rf"{re.escape(SERVICE)}jobs"), timeout=WAIT_MS)
    page.locator("header nav a", has_text="Admin").click()
    page.wait_for_url(re.compile(rf"{re.escape(SERVICE)}admin"), timeout=WAIT_MS)

    queued = page.locator(f'#queue-table tr[data-job-id="{running["id"]}"]')
    assert "alice" in queued.inner_text() and "researchers" in queued.inner_text()
    assert queued.locator(".job-state").inner_text().startswith("running")

    (train_uuid,) = running["gpu_uuids"]
    train_row = page.locator(f'#gpu-table tr[data-gpu-uuid="{train_uuid}"]')
    holder = train_row.locator('.holder[data-holder-kind="job"]')
    assert running["id"] in holder.inner_text()
    assert "train <resnet> & tick" in holder.inner_text() and "of alice" in holder.inner_text()
    assert "1000/1000 milli-GPU" in train_row.inner_text()
    assert page.locator("#gpu-table tbody tr").count() == 2

    researchers = page.locator('#group-table tr[data-group="researchers"]')
    usage = " ".join(researchers.inner_text().split())
    # profiles/quotas.yaml: researchers hold 4000 milli-GPU of slices and 4 guaranteed batch GPUs.
    assert "0 of 4000" in usage, usage
    assert "1 of 4 guaranteed, at most 8 with borrowing" in usage, usage

    page.set_viewport_size({"width": 1280, "height": 820})
    ADMIN_SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(ADMIN_SCREENSHOT), full_page=True)
    assert ADMIN_SCREENSHOT.read_bytes().startswith(b"\x89PNG")


def test_a_user_who_is_not_an_admin_gets_a_sentence_on_the_admin_page(hub, new_page):
    page = new_page()
    login(page, hub, "bob")
    # Through the OAuth redirects to the hub and back; the answer at the end is the refusal.
    response = page.goto(f"{hub.url}{SERVICE}admin")
    assert re.search(rf"{re.escape(SERVICE)}admin$", page.url), page.url
    assert response.status == 403
    message = page.locator("#error-message").inner_text()
    assert "The gpuslice admin page is for hub admins" in message
    assert "user bob is neither" in message
    assert page.locator("header nav a", has_text="Admin").count() == 0


def test_cancel_on_the_page_cancels_the_running_job(hub, jobs, alice_api, new_page):
    running = jobs["running"]
    page = new_page()
    login(page, hub, "alice")
    page.goto(f"{hub.url}{SERVICE}jobs?job={running['id']}")
    page.wait_for_url(re.compile(rf"{re.escape(SERVICE)}jobs"), timeout=WAIT_MS)
    page.locator("#job-detail").wait_for(state="visible", timeout=WAIT_MS)
    assert page.locator("#detail-state").inner_text() == "running"

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#cancel-button").click()
    page.wait_for_function(
        "() => document.getElementById('detail-state').textContent === 'cancelled'", timeout=WAIT_MS
    )
    row_state = page.locator(f'tr[data-job-id="{running["id"]}"] .job-state')
    page.wait_for_function(
        f"""() => document.querySelector('tr[data-job-id="{running["id"]}"] .job-state')
                  .textContent === 'cancelled'""",
        timeout=WAIT_MS,
    )
    assert row_state.inner_text() == "cancelled"
    assert page.locator("#cancel-button").is_disabled()
    assert "cancelled by alice" in page.locator("#detail-reason").inner_text()
    # The log ends: the service says it is complete, and the page stops following.
    page.wait_for_function(
        "() => document.getElementById('log-status').textContent.startsWith('(complete')", timeout=WAIT_MS
    )

    # The REST API agrees, and the training GPU is free again.
    job = alice_api.job(running["id"])
    assert (job["state"], job["reason"]) == ("cancelled", "cancelled by alice")
    gpus = alice_api.session.get(alice_api.api + "gpus", timeout=30).json()["gpus"]
    assert {gpu["uuid"]: gpu["milli_free"] for gpu in gpus}[running["gpu_uuids"][0]] == 1000
