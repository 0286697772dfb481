"""A lease belongs to what holds it: a batch job's to the service, a server's to its spawner.

Against a real hub and the real service: users cannot release the leases of their jobs (409: cancel
the job) or servers (403: stop the server), ask by profile only (raw requests are for admins and
the service), never see whether another user's lease id exists, and every lease has a holder the
reconciler checks (``user/server`` of its user) or an expiry after which the service releases it.
"""

from __future__ import annotations

import math
import time
import uuid

import pytest
from harness.jobs import FINAL, get_job, submit, train_gpu, wait_for, wait_for_log
from harness.service_hubs import start_job_hub

pytestmark = pytest.mark.slow

SLEEPS = """\
import time
print("started", flush=True)
time.sleep(600)
"""


def new_id() -> str:
    return f"own-{uuid.uuid4().hex}"


def assert_json_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()
    assert set(error) >= {"status", "message"} and error["status"] == status, error
    return error["message"]


def live(session, hub, lease_id: str) -> bool:
    response = session.get(hub.api + f"leases/{lease_id}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["lease"]["released_at"] is None


@pytest.fixture(scope="module")
def job_hub(tmp_path_factory):
    """A training GPU for jobs (the dev GPU held by carol's server) and a reconciler that runs
    every half second, so that an expiry shows at once."""
    hub = start_job_hub(tmp_path_factory.mktemp("ownership-hub"), "--LeaseReconciler.interval_seconds=0.5")
    yield hub
    hub.stop()


# ----------------------------------------------------------------------------- batch jobs' leases


def test_nobody_releases_a_running_jobs_lease_and_no_second_job_starts_on_its_gpu(job_hub):
    hub = job_hub
    bob = hub.as_user("bob")
    running = submit(bob, hub, SLEEPS, name="holds the training GPU")
    running = wait_for(bob, hub, running["id"], ("running",))
    wait_for_log(bob, hub, running["id"], "started")
    waiting = submit(bob, hub, SLEEPS, name="waits for it")
    try:
        lease_id = running["lease_id"]
        callers = {
            "bob": bob,
            "erin (admin)": hub.as_user("erin"),
            "the service": hub.client(hub.service_token),
        }
        for who, session in callers.items():
            message = assert_json_error(session.delete(hub.api + f"leases/{lease_id}", timeout=30), 409)
            assert f"job {running['id']}" in message, (who, message)
            assert f"DELETE jobs/{running['id']}" in message and "gpuslice jobs cancel" in message, message

        # A few scheduling passes (every 0.5 s) later, the job still runs alone on its GPU.
        time.sleep(3)
        assert get_job(bob, hub, running["id"])["job"]["state"] == "running"
        assert get_job(bob, hub, waiting["id"])["job"]["state"] == "queued"
        assert live(hub.client(hub.service_token), hub, lease_id)
        gpu = train_gpu(hub)
        assert gpu["milli_free"] == 0
        assert [holder["lease_id"] for holder in gpu["holders"]] == [lease_id]
    finally:
        for job in (waiting, running):
            bob.delete(hub.api + f"jobs/{job['id']}", timeout=30)
        for job in (waiting, running):
            wait_for(bob, hub, job["id"], FINAL)


# ----------------------------------------------------------------------- raw requests and profiles


def test_a_user_asks_by_profile_only_and_every_rule_of_the_profile_applies(job_hub):
    hub = job_hub
    carol = hub.as_user("carol")  # in no group
    refused = carol.post(
        hub.api + "leases",
        json={"lease_id": new_id(), "user": "carol", "holder": "carol/", "profile": "a100-full"},
        timeout=30,
    )
    assert "is in none of them" in assert_json_error(refused, 400)
    bob = hub.as_user("bob")  # a student
    refused = bob.post(
        hub.api + "leases",
        json={"lease_id": new_id(), "user": "bob", "holder": "bob/", "profile": "a100-full"},
        timeout=30,
    )
    assert "is in none of them" in assert_json_error(refused, 400)

    # The same whole training GPU asked for as a raw request (the attack of issue 10).
    attack = {
        "lease_id": "carol-raw1",
        "user": "carol",
        "holder": "forever",
        "request": {"gpus": 1, "pool": "train"},
    }
    message = assert_json_error(carol.post(hub.api + "leases", json=attack, timeout=30), 403)
    assert "profile" in message
    for holder in ("carol/", "carol/big"):
        asked = dict(attack, lease_id=new_id(), holder=holder)
        assert "profile" in assert_json_error(carol.post(hub.api + "leases", json=asked, timeout=30), 403)
    leases = hub.client(hub.service_token).get(hub.api + "leases?user=carol", timeout=30).json()["leases"]
    assert all(lease["id"].startswith("dev-holder-") for lease in leases), leases  # nothing granted
    assert train_gpu(hub)["milli_free"] == 1000


# ------------------------------------------------------------------- holders the reconciler checks


def test_every_lease_has_a_holder_the_reconciler_checks_or_an_expiry(job_hub):
    hub = job_hub
    service = hub.client(hub.service_token)
    forever = {
        "lease_id": new_id(),
        "user": "carol",
        "holder": "forever",
        "request": {"gpus": 1, "pool": "train"},
    }
    for session in (service, hub.as_user("erin")):
        message = assert_json_error(session.post(hub.api + "leases", json=forever, timeout=30), 400)
        assert "expires_at" in message and "carol/" in message, message
    someone_elses = dict(forever, holder="alice/")
    assert "expires_at" in assert_json_error(
        service.post(hub.api + "leases", json=someone_elses, timeout=30), 400
    )

    # A user's lease is held by one of their own servers, even with an expiry.
    bob = hub.as_user("bob")
    for holder, extra in (("forever", {}), ("forever", {"expires_at": time.time() + 60}), ("alice/", {})):
        asked = {"lease_id": new_id(), "user": "bob", "holder": holder, "profile": "cpu", **extra}
        message = assert_json_error(bob.post(hub.api + "leases", json=asked, timeout=30), 403)
        assert "bob/" in message, message

    # An expiry in the past, or not a number, is refused.
    for expires_at in (time.time() - 10, "tomorrow"):
        asked = dict(forever, lease_id=new_id(), expires_at=expires_at)
        assert "expires_at" in assert_json_error(
            service.post(hub.api + "leases", json=asked, timeout=30), 400
        )

    # With an expiry the service releases the lease then, and the GPU is free again.
    expires_at = time.time() + 2
    maintenance = dict(forever, lease_id=new_id(), holder="maintenance", expires_at=expires_at)
    granted = service.post(hub.api + "leases", json=maintenance, timeout=30)
    assert granted.status_code == 201, granted.text
    lease = granted.json()["lease"]
    assert lease["expires_at"] == math.ceil(expires_at)
    assert lease["holder"].startswith("maintenance until ")
    again = service.post(hub.api + "leases", json=maintenance, timeout=30)  # a retry finds it
    assert again.status_code == 200 and again.json() == granted.json(), again.text
    assert train_gpu(hub)["milli_free"] == 0
    carols = hub.as_user("carol").delete(hub.api + f"leases/{maintenance['lease_id']}", timeout=30)
    assert "when it expires" in assert_json_error(carols, 403)
    deadline = time.monotonic() + 30
    while live(service, hub, maintenance["lease_id"]):
        if time.monotonic() > deadline:
            pytest.fail(f"the expired lease was never released:\n{hub.log()}")
        time.sleep(0.3)
    assert train_gpu(hub)["milli_free"] == 1000
    assert f"released lease {maintenance['lease_id']} of carol: it expired" in hub.log_path.read_text()


# --------------------------------------------------------------------------------- servers' leases


def test_a_user_cannot_release_their_own_servers_lease(hub, service):
    body = {"lease_id": new_id(), "user": "alice", "holder": "alice/", "profile": "a100-1-8"}
    granted = service.post(hub.api + "leases", json=body, timeout=30)  # as the spawner does
    assert granted.status_code == 201, granted.text

    alice = hub.as_user("alice")
    message = assert_json_error(alice.delete(hub.api + f"leases/{body['lease_id']}", timeout=30), 403)
    assert "stop the server" in message and "hub" in message, message
    assert live(service, hub, body["lease_id"])
    held = sum(
        holder["milli_gpu"]
        for gpu in service.get(hub.api + "gpus", timeout=30).json()["gpus"]
        for holder in gpu["holders"]
    )
    assert held == 125

    # The spawner (the service's own token) and admins do release servers' leases.
    released = hub.as_user("dana").delete(hub.api + f"leases/{body['lease_id']}", timeout=30)
    assert released.status_code == 200 and released.json()["lease"]["released_at"] is not None, released.text
    other = dict(body, lease_id=new_id())
    assert service.post(hub.api + "leases", json=other, timeout=30).status_code == 201
    assert service.delete(hub.api + f"leases/{other['lease_id']}", timeout=30).status_code == 200


def test_a_user_cannot_ask_for_a_raw_request(hub, service):
    body = {"lease_id": new_id(), "user": "alice", "holder": "alice/", "request": {"milli_gpu": 250}}
    message = assert_json_error(hub.as_user("alice").post(hub.api + "leases", json=body, timeout=30), 403)
    assert "profile" in message
    assert service.get(hub.api + "leases?user=alice", timeout=30).json() == {"leases": []}
    by_profile = dict(body, profile="a100-1-4")
    del by_profile["request"]
    granted = hub.as_user("alice").post(hub.api + "leases", json=by_profile, timeout=30)
    assert granted.status_code == 201, granted.text


# ------------------------------------------------------------------------ other users' lease ids


def test_foreign_and_unknown_lease_ids_answer_the_same_404(hub, service):
    alices = {"lease_id": new_id(), "user": "alice", "holder": "alice/", "profile": "a100-1-8"}
    assert service.post(hub.api + "leases", json=alices, timeout=30).status_code == 201
    unknown = new_id()
    bob = hub.as_user("bob")
    for method in ("get", "delete"):
        foreign = getattr(bob, method)(hub.api + f"leases/{alices['lease_id']}", timeout=30)
        nothing = getattr(bob, method)(hub.api + f"leases/{unknown}", timeout=30)
        foreign_message = assert_json_error(foreign, 404)
        assert assert_json_error(nothing, 404).replace(unknown, "ID") == foreign_message.replace(
            alices["lease_id"], "ID"
        )
        assert "alice" not in foreign_message
    assert live(service, hub, alices["lease_id"])


def test_a_lease_id_conflict_does_not_name_another_users_holder(hub, service):
    alices = {"lease_id": new_id(), "user": "alice", "holder": "alice/secret-project", "profile": "a100-1-8"}
    assert service.post(hub.api + "leases", json=alices, timeout=30).status_code == 201
    bobs = {"lease_id": alices["lease_id"], "user": "bob", "holder": "bob/", "profile": "a100-1-8"}
    message = assert_json_error(hub.as_user("bob").post(hub.api + "leases", json=bobs, timeout=30), 409)
    assert "secret-project" not in message and "alice" not in message, message
    assert "new lease id" in message, message
    # The owner's own conflict still says what differs.
    changed = dict(alices, profile="a100-1-4")
    own = assert_json_error(service.post(hub.api + "leases", json=changed, timeout=30), 409)
    assert "different request" in own
