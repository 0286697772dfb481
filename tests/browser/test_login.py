"""Logging in through the hub's real login page in a real browser."""

import re

import pytest

from .conftest import login, start_hub

pytestmark = pytest.mark.slow

# Pages a logged-in user can land on right after the login form.
LANDING = re.compile(r"/(hub/(home|spawn|spawn-pending)(/[^?]*)?|user/[^/]+/.*)(\?.*)?$")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    process = start_hub(tmp_path_factory.mktemp("hub"))
    yield process
    process.stop()


def test_login_page_renders_and_is_screenshotted(hub, new_page, tmp_path):
    page = new_page()
    page.goto(f"{hub.url}/hub/login")
    assert page.locator("#username_input").is_visible()
    assert page.locator("#password_input").is_visible()
    assert page.locator("#login_submit").is_visible()
    shot = tmp_path / "login-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_login_with_the_password_lands_on_the_hub_with_the_users_name(hub, new_page):
    page = new_page()
    login(page, hub, "carol")
    page.wait_for_url(LANDING)
    assert "/hub/login" not in page.url
    # The hub's own pages name the logged-in user in the navigation bar.
    page.goto(f"{hub.url}/hub/home")
    assert page.url.endswith("/hub/home")
    assert page.locator("nav").get_by_text("carol", exact=True).is_visible()


def test_wrong_password_shows_the_error_on_the_login_page(hub, new_page):
    page = new_page()
    login(page, hub, "mallory", "not-the-password")
    assert "/hub/login" in page.url
    error = page.locator(".login_error")
    assert error.is_visible()
    assert "Invalid username or password" in error.inner_text()
    # Still logged out: the hub's pages send the browser back to the login form.
    page.goto(f"{hub.url}/hub/home")
    assert "/hub/login" in page.url
