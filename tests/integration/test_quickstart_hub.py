"""The hub as ``make run`` starts it: up on loopback, no open login, a real server spawns."""

import time

import pytest
from harness import HubProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    process = HubProcess(tmp_path_factory.mktemp("hub")).start()
    yield process
    process.stop()


def test_wrong_password_is_refused(hub):
    session = hub.login("mallory", "not-the-password")
    assert session.login_status == 403
    assert "jupyterhub-session-id" not in session.cookies or not session.cookies.get("jupyterhub-hub-login")


def test_login_and_spawn_a_real_server(hub):
    session = hub.login("alice")
    assert session.login_status == 302
    headers = {}
    response = session.post(f"{hub.url}/hub/api/users/alice/server", json={}, headers=headers, timeout=30)
    assert response.status_code in (201, 202), response.text
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        model = session.get(f"{hub.url}/hub/api/users/alice", headers=headers, timeout=10).json()
        if model["servers"].get("", {}).get("ready"):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"alice's server never became ready:\n{hub.log()}")
    # Visiting the page goes through the hub's OAuth handshake, as a browser does.
    lab = session.get(f"{hub.url}/user/alice/lab", timeout=30)
    assert lab.status_code == 200, lab.text
    assert "JupyterLab" in lab.text
    status = session.get(f"{hub.url}/user/alice/api/status", timeout=10)
    assert status.status_code == 200, status.text
    stop = session.delete(f"{hub.url}/hub/api/users/alice/server", headers=headers, timeout=30)
    assert stop.status_code in (202, 204)
