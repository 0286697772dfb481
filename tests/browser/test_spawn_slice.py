"""Issue 3 end to end in a real browser: pick a GPU slice from the dropdown, get it, hit the quota.

The hub is the embedded default (hub_config.py) with its gpuslice service and simulated GPUs, and a
copy of profiles/ whose quotas.yaml lets the group ``researchers`` (alice and bob) hold one 1/8 slice.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
import yaml

from .conftest import login, start_hub

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO_ROOT / "docs" / "spawn-page.png"
SLICE = "a100-1-8"  # profiles/default.yaml: "PyTorch · 1/8 A100", milli_gpu 125
CPU = "cpu"
GROUP_QUOTA_MILLI = 125  # the group's whole interactive quota is one 1/8 slice
QUOTA_SENTENCE = f"group researchers already uses {GROUP_QUOTA_MILLI}/{GROUP_QUOTA_MILLI} milli-GPU"
SPAWN_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def profiles_dir(tmp_path_factory) -> Path:
    """profiles/ as shipped, except that researchers may hold 125 milli-GPU of slices at once."""
    directory = tmp_path_factory.mktemp("profiles")
    for source in (REPO_ROOT / "profiles").glob("*.yaml"):
        shutil.copy(source, directory / source.name)
    quotas = yaml.safe_load((directory / "quotas.yaml").read_text())
    quotas["quotas"]["groups"]["researchers"]["interactive"] = {"servers": 8, "milli_gpu": GROUP_QUOTA_MILLI}
    (directory / "quotas.yaml").write_text(yaml.safe_dump(quotas, sort_keys=False))
    return directory


@pytest.fixture(scope="module")
def shipped_hub(tmp_path_factory):
    """profiles/ as shipped, on two simulated A100s, both sliced for notebooks; alice and bob are
    researchers."""
    process = start_hub(
        tmp_path_factory.mktemp("shipped-hub"),
        {
            "GPUSLICE_SIMULATED_GPUS": "2",
            "GPUSLICE_TRAIN_GPUS": "none",
            "GPUSLICE_GROUPS": "researchers=alice,bob",
        },
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def hub(tmp_path_factory, profiles_dir):
    process = start_hub(
        tmp_path_factory.mktemp("hub"),
        {"GPUSLICE_PROFILES_DIR": str(profiles_dir), "GPUSLICE_GROUPS": "researchers=alice,bob"},
    )
    yield process
    process.stop()


def option(page, slug: str):
    return page.locator(f'#gpuslice-profile option[value="{slug}"]')


def free_count(text: str) -> int:
    match = re.search(r"(\d+) free", text)
    assert match, f"the option does not say how many are free: {text!r}"
    return int(match.group(1))


def open_spawn_page(page, hub) -> None:
    page.goto(f"{hub.url}/hub/spawn")
    assert page.url.split("?")[0].endswith("/hub/spawn"), page.url
    page.locator("#gpuslice-profile").wait_for(state="visible")


def assert_no_server_error(page) -> None:
    """Neither JupyterHub's error page ("500 : Internal Server Error") nor a traceback."""
    text = page.locator("body").inner_text()
    assert "Traceback" not in text, text
    assert "Internal Server Error" not in text, text
    assert not re.search(r"\b500 :", text), text


def server_environments(hub, user: str) -> list[dict[str, str]]:
    """The environments of ``user``'s single-user server processes of this hub, read from /proc."""
    hub_api = f"127.0.0.1:{hub.env['GPUSLICE_HUB_PORT']}/"
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            raw = environ.read_bytes().decode(errors="replace")
        except OSError:  # gone, or not ours to read
            continue
        variables = dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)
        if variables.get("JUPYTERHUB_USER") == user and hub_api in variables.get("JUPYTERHUB_API_URL", ""):
            found.append(variables)
    return found


def test_spawn_page_lists_profiles_with_availability(shipped_hub, new_page):
    """profiles/ as shipped on two simulated A100s: the dropdown says what is free and what is not."""
    page = new_page()
    login(page, shipped_hub, "alice")
    open_spawn_page(page, shipped_hub)
    assert option(page, CPU).is_enabled()
    assert "1/8" in option(page, SLICE).inner_text()
    assert option(page, SLICE).is_enabled()
    # Two 80 GB A100s hold sixteen eighths, eight quarters, or two whole cards.
    assert free_count(option(page, SLICE).inner_text()) == 16
    assert free_count(option(page, "a100-1-4").inner_text()) == 8
    assert free_count(option(page, "a100-full").inner_text()) == 2
    # No T4 in the inventory: the T4 profile is shown, disabled, with the reason in its text.
    t4 = option(page, "t4-1-2")
    assert t4.is_disabled()
    reason = t4.get_attribute("data-reason")
    assert reason and reason in t4.inner_text()
    quota = page.locator("#gpuslice-quota")
    assert "0 of 1000 milli-GPU" in quota.inner_text()
    assert "Group researchers" in quota.inner_text() and "0 of 4000 milli-GPU" in quota.inner_text()

    # For the README: the 1/8 slice chosen, and every choice shown at once. A native dropdown's
    # open list is not part of a page screenshot, so the select is drawn as a list box for it.
    page.select_option("#gpuslice-profile", SLICE)
    page.locator("#gpuslice-profile").evaluate("select => { select.size = select.options.length; }")
    page.set_viewport_size({"width": 1280, "height": 500})
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.read_bytes().startswith(b"\x89PNG")


def test_a_slice_is_granted_refused_at_quota_and_freed_on_stop(hub, new_page):
    alice, bob = new_page(), new_page()
    login(alice, hub, "alice")
    login(bob, hub, "bob")

    # Bob opens the form while the slice is still within the group's quota.
    open_spawn_page(bob, hub)
    assert option(bob, SLICE).is_enabled()
    free_before = free_count(option(bob, SLICE).inner_text())

    # Alice takes the 1/8 slice and lands in JupyterLab.
    open_spawn_page(alice, hub)
    alice.select_option("#gpuslice-profile", SLICE)
    alice.locator('#spawn_form button[type="submit"]').click()
    alice.wait_for_url(re.compile(r"/user/alice/lab"), timeout=SPAWN_TIMEOUT_MS)
    alice.locator("#jp-main-dock-panel").wait_for(state="visible", timeout=SPAWN_TIMEOUT_MS)

    environments = server_environments(hub, "alice")
    assert environments, "no process of this hub has JUPYTERHUB_USER=alice in its environment"
    environment = environments[0]
    assert environment.get("CUDA_VISIBLE_DEVICES", "").startswith("GPU-sim-"), environment
    assert environment.get("GPUSLICE_MILLI_GPU") == "125", environment
    assert environment.get("GPUSLICE_PROFILE") == SLICE, environment

    # Bob submits the form he opened before: the hub refuses with the quota sentence, no error page.
    bob.select_option("#gpuslice-profile", SLICE)
    with bob.expect_navigation(timeout=SPAWN_TIMEOUT_MS) as submitted:
        bob.locator('#spawn_form button[type="submit"]').click()
    assert submitted.value.status < 500, submitted.value.status
    error = bob.locator(".spawn-error-msg")
    error.wait_for(state="visible")
    assert QUOTA_SENTENCE in error.inner_text()
    assert_no_server_error(bob)
    assert server_environments(hub, "bob") == []

    # A fresh form shows the slice disabled, with the reason.
    open_spawn_page(bob, hub)
    assert option(bob, SLICE).is_disabled()
    assert QUOTA_SENTENCE in option(bob, SLICE).inner_text()
    assert QUOTA_SENTENCE in (option(bob, SLICE).get_attribute("data-reason") or "")
    assert option(bob, CPU).is_enabled()

    # Alice stops her server from the hub's home page; the slice comes back.
    alice.goto(f"{hub.url}/hub/home")
    alice.locator("#stop").click()
    alice.locator("#stop").wait_for(state="hidden", timeout=SPAWN_TIMEOUT_MS)
    assert "Start My Server" in alice.locator("#start").inner_text()

    deadline = time.monotonic() + 60
    while True:
        open_spawn_page(bob, hub)
        if option(bob, SLICE).is_enabled() or time.monotonic() > deadline:
            break
        bob.wait_for_timeout(500)
    assert option(bob, SLICE).is_enabled(), option(bob, SLICE).inner_text()
    assert free_count(option(bob, SLICE).inner_text()) == free_before
    assert server_environments(hub, "alice") == []
