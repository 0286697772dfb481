"""The JupyterLab extension in real JupyterLab (issue 16): the "GPU jobs" panel and the slice in the
status bar, in headless Chromium, against the real hub of hub_config.py with its service.

Two simulated A100s: index 0 sliced for notebooks, index 1 the one training GPU. ada's server
holds a 1/8 slice. In a notebook she submits a job that holds the training GPU, then one that
must queue behind it; the panel shows the second queued, she cancels the first from the panel, and
the second runs and succeeds, all without a reload. Its log is shown live, and "insert fetch cell"
brings its values into the notebook.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import requests
from integration.kernels import spawn_server

from .conftest import login, start_hub

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
EXTENSION = REPO_ROOT / "spawner" / "enforce" / "jupyter_data" / "labextensions" / "jupyterlab-gpuslice"
SCREENSHOT = REPO_ROOT / "docs" / "lab-jobs-panel.png"
PROFILE = "a100-1-8"
BLOCKER = (
    "%%submit --gpus 1 --name blocker\nimport time\nprint('holding the training GPU', flush=True)\n"
    "time.sleep(600)"
)
DEMO = (
    "%%submit --gpus 1 --name lab-demo\nimport time\nfor step in range(6):\n"
    "    print('step', step, flush=True)\n    time.sleep(1)\nanswer = 6 * 7"
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not (EXTENSION / "package.json").exists():
        pytest.skip(
            f"the JupyterLab extension is not built ({EXTENSION}); `make labextension` builds it with npm"
        )
    hub = start_hub(
        tmp_path_factory.mktemp("lab-hub"),
        {"GPUSLICE_SIMULATED_GPUS": "2", "GPUSLICE_TRAIN_GPUS": "1", "GPUSLICE_HTTP_TIMEOUT": "150"},
    )
    user = f"ada{uuid.uuid4().hex[:8]}"
    try:
        session = spawn_server(hub, user, PROFILE)
        yield hub, user, session
    finally:
        hub.stop()


def new_notebook(hub, user: str, session: requests.Session) -> str:
    """An empty notebook on the python3 kernel, made through the server's contents API."""
    token = session.post(f"{hub.url}/hub/api/users/{user}/tokens", json={"note": "lab test"}, timeout=10)
    assert token.status_code == 201, token.text
    name = "jobs.ipynb"
    notebook = {
        "cells": [],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    made = requests.put(
        f"{hub.url}/user/{user}/api/contents/{name}",
        json={"type": "notebook", "content": notebook},
        headers={"Authorization": f"token {token.json()['token']}"},
        timeout=30,
    )
    assert made.status_code in (200, 201), made.text
    return name


def run_cell(page, source: str) -> None:
    """Type ``source`` into the notebook's last cell and run it (Shift+Enter adds a new one below),
    once the kernel is idle; returns when the kernel has taken the cell (its prompt is no longer
    ``[ ]``)."""
    page.locator(".jp-StatusBar-TextItem", has_text="| Idle").wait_for(timeout=120_000)
    cells = page.locator(".jp-NotebookPanel:visible .jp-Cell")
    cell = cells.nth(cells.count() - 1)  # this cell, not the one Shift+Enter adds below it
    cell.locator(".cm-content").click()
    page.keyboard.insert_text(source)
    page.keyboard.press("Shift+Enter")
    prompt = cell.locator(".jp-InputPrompt")
    deadline = time.monotonic() + 60
    while prompt.inner_text().strip() in ("[ ]:", "") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert prompt.inner_text().strip() not in ("[ ]:", ""), "the kernel never took the cell"


def row(page, name: str):
    return page.locator(".jp-gpuslice-job", has=page.locator(".jp-gpuslice-job-name", has_text=name))


def states_until(page, name: str, final: str, timeout_s: float = 120, act=None) -> list[str]:
    """The states the panel showed for job ``name`` (each once, in order) until ``final``; ``act``
    is called once the job shows ``queued`` (to free the GPU it waits for)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if row(page, name).count():
            state = row(page, name).first.get_attribute("data-state")
            if state and (not seen or seen[-1] != state):
                seen.append(state)
                if state == "queued" and act is not None:
                    act()
                    act = None
            if state == final:
                return seen
        time.sleep(0.2)
    cells = page.locator(".jp-NotebookPanel .jp-Cell").all_inner_texts()
    panel = page.locator("#gpuslice-jobs").inner_text()
    pytest.fail(f"job {name} never showed {final} in the panel; it showed {seen}\n{panel=}\n{cells=}")


def test_the_panel_follows_jobs_live_cancels_one_and_the_status_bar_shows_the_slice(lab, new_page):
    hub, user, session = lab
    name = new_notebook(hub, user, session)
    page = new_page()
    login(page, hub, user)
    page.goto(f"{hub.url}/user/{user}/lab/tree/{name}")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)

    status = page.locator(".jp-gpuslice-status[data-loaded='true']")
    status.wait_for(timeout=60_000)
    assert status.inner_text() == "1/8 A100 · 10 GB (simulated)"
    status.click()  # the status bar item opens the panel
    panel = page.locator("#gpuslice-jobs")
    panel.wait_for(state="visible")
    assert panel.locator(".jp-gpuslice-heading").text_content() == "GPU jobs"

    run_cell(page, BLOCKER)
    assert states_until(page, "blocker", "running")[-1] == "running"
    run_cell(page, DEMO)

    def cancel_the_blocker() -> None:
        queued = row(page, "lab-demo").first.locator(".jp-gpuslice-job-detail").inner_text()
        assert queued.startswith("position 0"), queued
        row(page, "blocker").first.click()
        page.locator(".jp-gpuslice-cancel").click()

    seen = states_until(page, "lab-demo", "succeeded", act=cancel_the_blocker)
    assert seen[0] == "queued" and "running" in seen and seen[-1] == "succeeded", seen
    assert seen.index("queued") < seen.index("running") < seen.index("succeeded")
    assert row(page, "blocker").first.get_attribute("data-state") == "cancelled"
    assert "cancelled by" in row(page, "blocker").first.inner_text()

    row(page, "lab-demo").first.click()
    log = page.locator(".jp-gpuslice-log")
    page.wait_for_function(
        "() => (document.querySelector('.jp-gpuslice-log')?.textContent || '').includes('step 5')",
        timeout=30_000,
    )
    assert [line for line in log.inner_text().splitlines() if line.startswith("step")] == [
        f"step {step}" for step in range(6)
    ]
    assert page.locator(".jp-gpuslice-cancel").is_disabled()

    page.locator(".jp-gpuslice-fetch").click()
    job_id = row(page, "lab-demo").first.locator(".jp-gpuslice-job-id").inner_text()
    # A new cell below the active one, active itself, holding the fetch (not an output that names it).
    fetch_cell = page.locator(".jp-NotebookPanel:visible .jp-Cell.jp-mod-active .cm-content")
    page.wait_for_function(
        f"() => document.querySelector('.jp-NotebookPanel .jp-Cell.jp-mod-active .cm-content')"
        f"?.textContent === '%job fetch {job_id}'"
    )
    fetch_cell.click()
    page.keyboard.press("Shift+Enter")
    fetched = page.locator(".jp-OutputArea-output", has_text=f"fetched from {job_id}: ")
    fetched.wait_for(timeout=60_000)
    assert "answer (int)" in fetched.inner_text(), fetched.inner_text()
    news = page.get_by_role("button", name="No", exact=True)  # JupyterLab's "notified about news?"
    if news.count():
        news.first.click()
        page.get_by_text("get notified about official Jupyter news").wait_for(state="hidden")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))

    # The panel reaches only what the magic does, with the server's token: reading, cancelling.
    refused = page.evaluate(
        """async () => {
            const xsrf = document.cookie.split('; ').find(c => c.startsWith('_xsrf='))?.split('=')[1];
            const base = document.querySelector('body').dataset.baseUrl
                || JSON.parse(document.getElementById('jupyter-config-data').textContent).baseUrl;
            const answer = await fetch(base + 'gpuslice/api/leases', {headers: {'X-XSRFToken': xsrf}});
            return [answer.status, (await answer.json()).message];
        }"""
    )
    assert refused[0] == 404 and "not something the jobs panel can do" in refused[1], refused
    assert page.locator(".jp-gpuslice-job").count() == 2
