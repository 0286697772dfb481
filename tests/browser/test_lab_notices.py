"""The GPU monitor's notices reach the user in JupyterLab (issue 15: "warn: a message to the user's
server"): the server extension passes on ``GET notices`` for its own user only, and the lab shows
each new one once as a JupyterLab notification, not again after a reload.

The notices are kept in the ledger by an earlier run of the service (as a warned slice's would be:
``GPUMonitor`` writes them there and reads them back at start); this hub's service starts on that
ledger, with simulated GPUs, which never go over a slice by themselves.
"""

from __future__ import annotations

import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests
from integration.kernels import spawn_server

from spawner.ledger import Ledger
from spawner.ledger.usage_rollup import GPUNotice, UsageRollup

from .conftest import login, start_hub
from .test_lab_panel import EXTENSION, PROFILE

pytestmark = pytest.mark.slow

OWN_WARNING = "alice's lease holds 3000 MiB on GPU-sim-0, over its slice of 1280 MiB"
OTHER_WARNING = "bob's lease holds 9000 MiB on GPU-sim-0, over its slice of 1280 MiB"


@pytest.fixture(scope="module")
def noticed_lab(tmp_path_factory):
    if not (EXTENSION / "package.json").exists():
        pytest.skip(
            f"the JupyterLab extension is not built ({EXTENSION}); `make labextension` builds it with npm"
        )
    state_dir = tmp_path_factory.mktemp("notices-hub")
    user, other = f"ada{uuid.uuid4().hex[:8]}", f"bob{uuid.uuid4().hex[:8]}"
    now = time.time()
    with Ledger(f"sqlite:///{state_dir / 'gpuslice.sqlite'}") as ledger:
        ledger.create_schema()
        UsageRollup(ledger.engine).add_notices(
            [
                GPUNotice(
                    now - 60, user, "lease-ada", "over slice (warn)", OWN_WARNING.replace("alice", user)
                ),
                GPUNotice(now - 30, other, "lease-bob", "over slice (warn)", OTHER_WARNING),
            ],
            now,
        )
    hub = start_hub(state_dir, {"GPUSLICE_SIMULATED_GPUS": "2", "GPUSLICE_HTTP_TIMEOUT": "150"})
    try:
        session = spawn_server(hub, user, PROFILE)
        yield hub, user, session
    finally:
        hub.stop()


def user_token(hub, user: str, session: requests.Session) -> str:
    made = session.post(f"{hub.url}/hub/api/users/{user}/tokens", json={"note": "notices test"}, timeout=10)
    assert made.status_code == 201, made.text
    return made.json()["token"]


def test_the_server_passes_on_its_own_users_notices_only(noticed_lab):
    hub, user, session = noticed_lab
    headers = {"Authorization": f"token {user_token(hub, user, session)}"}
    url = f"{hub.url}/user/{user}/gpuslice/api/notices"
    own = requests.get(url, headers=headers, timeout=30)
    assert own.status_code == 200, own.text
    notices = own.json()["notices"]
    assert [(notice["user"], notice["kind"]) for notice in notices] == [(user, "over slice (warn)")]
    assert notices[0]["message"] == OWN_WARNING.replace("alice", user)
    # Asking for someone else through the server changes nothing: the server names its own user.
    other = requests.get(url + "?user=bob", headers=headers, timeout=30)
    assert other.status_code == 200 and other.json()["notices"] == notices


def test_the_lab_shows_a_new_notice_once_as_a_warning(noticed_lab, new_page):
    hub, user, _session = noticed_lab
    page = new_page()
    login(page, hub, user)
    page.goto(f"{hub.url}/user/{user}/lab")
    toast = page.locator(".Toastify__toast", has_text=f"{user}'s lease holds 3000 MiB")
    toast.wait_for(timeout=120_000)
    assert "Toastify__toast--warning" in (toast.get_attribute("class") or "")
    assert page.locator(".Toastify__toast", has_text="bob's lease").count() == 0

    # After a reload the lab asks again (its URL gets a cache-busting query), and shows nothing
    # it has shown before.
    def notices_answer(answer) -> bool:
        return urlsplit(answer.url).path.endswith("/gpuslice/api/notices")

    with page.expect_response(notices_answer, timeout=120_000) as polled:
        page.reload()
    assert polled.value.status == 200
    assert [notice["user"] for notice in polled.value.json()["notices"]] == [user]
    # One poll runs at a time, so once the next one is answered the first has been handled whole.
    with page.expect_response(notices_answer, timeout=120_000):
        pass
    assert page.locator(".Toastify__toast", has_text="MiB on GPU-sim-0").count() == 0
    shown = page.evaluate(
        "() => Object.keys(localStorage).filter(key => key.startsWith('gpuslice:notices-shown:'))"
    )
    assert shown == [f"gpuslice:notices-shown:{hub.url}/user/{user}/"], shown
