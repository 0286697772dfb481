"""The service's web pages over plain HTTP: OAuth login through the real hub, XSRF, who sees what.

The browser test (tests/browser/test_jobs_page.py) shows the pages working in Chromium; these pin
the rules a browser cannot show: where a stranger is sent, that a call riding on the login cookie
needs the page's XSRF token while a token-authenticated call does not, and that nobody's page or
API call shows another user's jobs.
"""

from __future__ import annotations

import re
import uuid
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from harness.hub import SERVICE_PREFIX, HubProcess
from harness.jobs import FINAL, get_job, submit, train_gpu, wait_for
from harness.service_hubs import start_job_hub

pytestmark = pytest.mark.slow

SLEEPS = """\
import time
print("started", flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = start_job_hub(tmp_path_factory.mktemp("pages-hub"))
    yield hub
    hub.stop()


@pytest.fixture
def cancel_afterwards(hub):
    """Job ids to cancel after the test (with the service's token), so the next test finds a free GPU."""
    job_ids: list[str] = []
    yield job_ids
    service = hub.client(hub.service_token)
    for job_id in job_ids:
        service.post(hub.api + f"jobs/{job_id}/cancel", timeout=30)
    for job_id in job_ids:
        wait_for(service, hub, job_id, FINAL)


class PageSession(requests.Session):
    """A user's browser, as far as cookies go: logged into the hub, then into the service's pages."""

    xsrf_token: str
    page_html: str


def page_url(hub: HubProcess, path: str = "") -> str:
    return f"{hub.url}{SERVICE_PREFIX}{path}"


def log_in(hub: HubProcess, user: str) -> PageSession:
    """Log in on the hub's form, open the jobs page, and follow the OAuth redirects back to it."""
    session = PageSession()
    session.get(f"{hub.url}/hub/login", timeout=30).raise_for_status()
    form = {"username": user, "password": "any password", "_xsrf": session.cookies.get("_xsrf", path="/hub/")}
    # Not following the hub's redirect: it leads to spawning a server this test hub cannot start.
    logged_in = session.post(f"{hub.url}/hub/login", data=form, allow_redirects=False, timeout=30)
    assert logged_in.status_code == 302, logged_in.text
    page = session.get(page_url(hub, "jobs"), timeout=30)
    assert page.status_code == 200, page.text
    assert urlparse(page.url).path == f"{SERVICE_PREFIX}jobs", page.url
    match = re.search(r'data-xsrf-token="([^"]+)"', page.text)
    assert match, "the page carries no XSRF token for its script"
    session.xsrf_token = match.group(1)
    session.page_html = page.text
    return session


def api_with_cookie(session: PageSession, method: str, url: str, xsrf: str | None) -> requests.Response:
    """An API call as the page's script makes it: the login cookie, and the XSRF header if given."""
    headers = {"X-XSRFToken": xsrf} if xsrf is not None else {}
    return session.request(method, url, headers=headers, timeout=30)


def assert_json_error(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()
    assert error["status"] == status
    return error["message"]


def test_a_stranger_is_sent_to_the_hubs_oauth_and_back_to_the_page(hub):
    stranger = requests.Session()
    root = stranger.get(page_url(hub), allow_redirects=False, timeout=30)
    assert root.status_code == 302 and root.headers["Location"] == f"{SERVICE_PREFIX}jobs"
    for path in ("jobs", "admin"):
        response = stranger.get(page_url(hub, path), allow_redirects=False, timeout=30)
        assert response.status_code == 302, response.text
        location = urlparse(response.headers["Location"])
        assert location.path == "/hub/api/oauth2/authorize"
        query = parse_qs(location.query)
        assert query["client_id"] == ["service-gpuslice"]
        assert query["redirect_uri"] == [f"{SERVICE_PREFIX}oauth_callback"]
        assert query["response_type"] == ["code"] and query["state"]
    # The API keeps answering programs with JSON, not with a redirect to a login page.
    assert "Authorization: token" in assert_json_error(stranger.get(hub.api + "jobs", timeout=30), 401)


def test_logging_in_through_the_hub_opens_my_jobs_page(hub):
    alice = log_in(hub, "alice")
    assert "<h1>My jobs</h1>" in alice.page_html
    assert 'id="user-name">alice<' in alice.page_html
    # Not an admin: no link to the admin page.
    assert f'href="{SERVICE_PREFIX}admin"' not in alice.page_html
    script = alice.get(page_url(hub, "static/jobs.js"), timeout=30)
    assert script.status_code == 200 and "X-XSRFToken" in script.text


def test_a_cookie_call_needs_the_xsrf_token_and_a_token_call_does_not(hub, cancel_afterwards):
    alice_token = hub.as_user("alice")
    first = submit(alice_token, hub, SLEEPS, name="cancel by token")
    second = submit(alice_token, hub, SLEEPS, name="cancel by page")
    cancel_afterwards.extend([first["id"], second["id"]])
    alice = log_in(hub, "alice")

    # Without the header, or with a made-up one, the login cookie is refused for a POST.
    for xsrf in (None, "not-the-token"):
        response = api_with_cookie(alice, "POST", hub.api + f"jobs/{first['id']}/cancel", xsrf)
        message = assert_json_error(response, 403)
        assert "X-XSRFToken" in message, message
    assert get_job(alice_token, hub, first["id"])["job"]["state"] not in FINAL

    # The same call with a token needs no XSRF token at all.
    by_token = alice_token.post(hub.api + f"jobs/{first['id']}/cancel", timeout=30)
    assert by_token.status_code == 200, by_token.text
    assert by_token.json()["job"]["state"] == "cancelled"

    # And the page's own way: the cookie with the token the page carries.
    by_page = api_with_cookie(alice, "POST", hub.api + f"jobs/{second['id']}/cancel", alice.xsrf_token)
    assert by_page.status_code == 200, by_page.text
    assert by_page.json()["job"]["state"] == "cancelled"
    assert by_page.json()["job"]["reason"] == "cancelled by alice"


def test_pages_and_their_calls_never_show_another_users_jobs(hub, cancel_afterwards):
    secret_name = f"bob-only-{uuid.uuid4().hex}"
    bobs = submit(hub.as_user("bob"), hub, SLEEPS, name=secret_name)
    alices = submit(hub.as_user("alice"), hub, SLEEPS, name="alice's own")
    cancel_afterwards.extend([bobs["id"], alices["id"]])
    alice = log_in(hub, "alice")
    assert secret_name not in alice.page_html and bobs["id"] not in alice.page_html

    listed = api_with_cookie(alice, "GET", hub.api + "jobs", alice.xsrf_token)
    assert listed.status_code == 200, listed.text
    owners = {job["owner"] for job in listed.json()["jobs"]}
    assert owners == {"alice"}
    assert alices["id"] in {job["id"] for job in listed.json()["jobs"]}
    # Another user's job is answered like an unknown one (404, naming nobody); listing another
    # user's or everyone's jobs is a 403.
    for path in (f"jobs/{bobs['id']}", f"jobs/{bobs['id']}/logs", f"jobs/{bobs['id']}/result"):
        message = assert_json_error(api_with_cookie(alice, "GET", hub.api + path, alice.xsrf_token), 404)
        assert "bob" not in message
    for path in ("jobs?user=bob", "jobs?all=1"):
        assert_json_error(api_with_cookie(alice, "GET", hub.api + path, alice.xsrf_token), 403)
    refused = api_with_cookie(alice, "POST", hub.api + f"jobs/{bobs['id']}/cancel", alice.xsrf_token)
    assert "bob" not in assert_json_error(refused, 404)
    assert get_job(hub.as_user("bob"), hub, bobs["id"])["job"]["state"] not in FINAL

    # The admin page is not for alice either: a sentence, not the queue with bob's job in it.
    admin_page = alice.get(page_url(hub, "admin"), timeout=30)
    assert admin_page.status_code == 403
    assert "The gpuslice admin page is for hub admins" in admin_page.text
    assert "user alice is neither" in admin_page.text
    assert secret_name not in admin_page.text


@pytest.mark.parametrize("admin", ["dana", "erin"])  # a hub admin; a holder of custom:gpuslice:admin
def test_the_admin_page_shows_the_queue_the_gpus_and_their_holders_and_group_quotas(
    hub, cancel_afterwards, admin
):
    running = submit(hub.as_user("alice"), hub, SLEEPS, name="<b>admin view</b>")
    cancel_afterwards.append(running["id"])
    started = wait_for(hub.as_user("alice"), hub, running["id"], ("running",))
    # Submitted once alice's job holds the GPU: submitted together, fair share may rightly start
    # bob's first (researchers' usage from the test before weighs against alice).
    waiting = submit(hub.as_user("bob"), hub, SLEEPS, name="waits")
    cancel_afterwards.append(waiting["id"])
    wait_for(hub.as_user("bob"), hub, waiting["id"], ("queued",))

    page = log_in(hub, admin).get(page_url(hub, "admin"), timeout=30)
    assert page.status_code == 200, page.text
    html = page.text
    queue = html[html.index('id="queue-table"') : html.index('id="gpus"')]
    assert f'data-job-id="{running["id"]}"' in queue and f'data-job-id="{waiting["id"]}"' in queue
    # Job names are escaped, never markup.
    assert "&lt;b&gt;admin view&lt;/b&gt;" in html and "<b>admin view</b>" not in html

    gpus = html[html.index('id="gpu-table"') : html.index('id="groups"')]
    gpu_rows = dict(re.findall(r'data-gpu-uuid="([^"]+)">(.*?)</tr>', gpus, re.S))
    train = gpu_rows[train_gpu(hub)["uuid"]]
    assert started["gpu_uuids"] == [train_gpu(hub)["uuid"]]
    assert running["id"] in train and "of alice" in train and "1000 milli-GPU" in train
    dev = next(row for uuid_, row in gpu_rows.items() if uuid_ != train_gpu(hub)["uuid"])
    assert "server carol/ of carol" in dev  # the module's interactive lease on the dev GPU

    groups = html[html.index('id="group-table"') :]
    researchers = re.search(r'data-group="researchers">(.*?)</tr>', groups, re.S).group(1)
    assert "4000" in researchers  # the test quota: 4000 milli-GPU of slices for the group
    # alice's running job holds one batch GPU; the test quota gives batch work no guarantee.
    assert re.search(r"\b1\s+of 0 guaranteed", researchers), researchers
