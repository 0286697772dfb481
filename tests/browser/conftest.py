"""A real browser (Debian's Chromium, driven by Playwright) against the real hub from hub_config.py.

No browser is ever downloaded: the tests use /usr/bin/chromium and skip, saying so, without it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# pytest puts tests/ on sys.path (its packages have no parent package): harness is tests/harness.
from harness import HubProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="package")
def browser():
    # Package scope, not session: Playwright's sync API keeps an asyncio loop running while it
    # lives, and tests after this package that call asyncio.run() must not find one.
    if not CHROMIUM.exists():
        pytest.skip(f"no browser: {CHROMIUM} is missing; install Debian's chromium (`make test` does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser):
    """Open pages in fresh browser contexts (no shared cookies between users); all closed after."""
    contexts = []

    def open_page():
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(30_000)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


def start_hub(state_dir: Path, extra_env: dict[str, str] | None = None) -> HubProcess:
    """The hub of hub_config.py with its gpuslice service on a free port and simulated GPUs."""
    env = {
        # The slices must be the labelled demo GPUs whether or not this machine has real ones.
        "GPUSLICE_INVENTORY": "simulated",
        **(extra_env or {}),
    }
    return HubProcess(state_dir, env).start(timeout=90)


def login(page, hub: HubProcess, user: str, password: str | None = None) -> None:
    """Log in through the hub's real login page, as a person does."""
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", password or hub.password)
    page.click("#login_submit")
    page.wait_for_load_state("load")
