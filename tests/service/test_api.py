"""The REST API against a real hub and the real service it manages."""

from __future__ import annotations

import json
import uuid

import pytest

pytestmark = pytest.mark.slow


def new_id() -> str:
    return f"test-{uuid.uuid4().hex}"


def lease_body(user: str, **fields) -> dict:
    body = {"lease_id": new_id(), "user": user, "holder": f"{user}/"}
    body.update(fields)
    return body


def assert_json_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()
    assert error["status"] == status
    assert isinstance(error["message"], str) and error["message"]
    return error


def test_health_and_openapi_need_no_token(hub):
    anonymous = hub.client(None)
    assert anonymous.get(hub.api + "health", timeout=10).json() == {"status": "ok"}
    document = anonymous.get(hub.api + "openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.1")


@pytest.mark.parametrize("path", ["gpus", "leases", "leases/whatever", "availability?user=alice"])
def test_a_call_without_a_token_gets_a_json_401(hub, path):
    error = assert_json_error(hub.client(None).get(hub.api + path, timeout=10), 401)
    assert "Authorization: token" in error["message"]


def test_a_made_up_token_gets_a_json_401(hub):
    assert_json_error(hub.client("not-a-real-token").get(hub.api + "leases", timeout=10), 401)


def test_a_token_without_access_to_the_service_gets_a_json_403(hub):
    token = hub.token_for("bob", scopes=["read:users!user=bob"])
    error = assert_json_error(hub.client(token).get(hub.api + "leases", timeout=10), 403)
    assert "access:services!service=gpuslice" in error["message"]


def test_the_spawner_creates_alices_lease_and_only_alice_and_admins_read_it(hub, service):
    body = lease_body("alice", profile="a100-1-8", holder="alice/")
    created = service.post(hub.api + "leases", json=body, timeout=30)
    assert created.status_code == 201, created.text
    lease = created.json()["lease"]
    assert lease["id"] == body["lease_id"]
    assert (lease["user"], lease["group"], lease["workload"]) == ("alice", "researchers", "interactive")
    assert lease["node"] == "sim-node"
    assert lease["shares"] == [
        {"gpu_uuid": lease["shares"][0]["gpu_uuid"], "milli_gpu": 125, "memory_mib": 10240}
    ]
    assert lease["shares"][0]["gpu_uuid"].startswith("GPU-sim-")
    assert lease["request"]["milli_gpu"] == 125 and lease["request"]["gpu_models"] == ["A100-80GB"]

    alice = hub.as_user("alice")
    mine = alice.get(hub.api + f"leases/{lease['id']}", timeout=10)
    assert mine.status_code == 200, mine.text
    assert mine.json()["lease"]["shares"] == lease["shares"]
    assert [item["id"] for item in alice.get(hub.api + "leases", timeout=10).json()["leases"]] == [
        lease["id"]
    ]

    # Another user's lease is, to bob, a lease that does not exist.
    error = assert_json_error(hub.as_user("bob").get(hub.api + f"leases/{lease['id']}", timeout=10), 404)
    assert error["message"] == f"no lease {lease['id']!r}"
    assert hub.as_user("bob").get(hub.api + "leases", timeout=10).json() == {"leases": []}
    assert_json_error(hub.as_user("bob").get(hub.api + "leases?user=alice", timeout=10), 403)
    assert_json_error(hub.as_user("bob").delete(hub.api + f"leases/{lease['id']}", timeout=10), 404)

    for admin in ("dana", "erin"):  # a hub admin, and a user with custom:gpuslice:admin
        seen = hub.as_user(admin).get(hub.api + f"leases/{lease['id']}", timeout=10)
        assert seen.status_code == 200, (admin, seen.text)
        listed = hub.as_user(admin).get(hub.api + "leases?user=alice", timeout=10).json()["leases"]
        assert [item["id"] for item in listed] == [lease["id"]]


def test_a_user_cannot_create_a_lease_for_someone_else(hub, service):
    body = lease_body("bob", request={"milli_gpu": 125})
    error = assert_json_error(hub.as_user("alice").post(hub.api + "leases", json=body, timeout=10), 403)
    assert "user bob" in error["message"]
    assert service.get(hub.api + "leases", timeout=10).json() == {"leases": []}


def test_a_user_creates_their_own_lease_by_profile_and_the_service_releases_it(hub, service):
    alice = hub.as_user("alice")
    body = lease_body("alice", profile="a100-1-4")
    created = alice.post(hub.api + "leases", json=body, timeout=30)
    assert created.status_code == 201, created.text
    assert created.json()["lease"]["expires_at"] is None
    assert_json_error(alice.delete(hub.api + f"leases/{body['lease_id']}", timeout=10), 403)
    released = service.delete(hub.api + f"leases/{body['lease_id']}", timeout=10)
    assert released.status_code == 200, released.text
    assert released.json()["lease"]["released_at"] is not None
    assert alice.get(hub.api + "leases", timeout=10).json() == {"leases": []}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"user": "alice", "holder": "alice/", "profile": "cpu"}, "'lease_id' is a required property"),
        (lease_body("alice", request={"mili_gpu": 125}), "the allowed fields are"),
        (lease_body("alice", request={"milli_gpu": 125}, colour="red"), "'colour' was unexpected"),
        (lease_body("alice", profile="cpu", request={"milli_gpu": 125}), "exactly one of 'profile'"),
        (lease_body("alice"), "exactly one of 'profile'"),
        (lease_body("alice", profile="no-such-profile"), "no profile 'no-such-profile'; choose one of"),
        (lease_body("alice", request={"milli_gpu": 1500}), "request/milli_gpu: 1500 is greater than"),
        (lease_body("alice", request={"milli_gpu": 125, "gpus": 1}), "either milli_gpu"),
        (lease_body("alice", request={"milli_gpu": "lots"}), "'lots' is not of type 'integer'"),
        (lease_body("alice", request={"milli_gpu": 125}, group="students"), "not in group 'students'"),
        (lease_body("bob", profile="a100-full"), "is in none of them"),
        (lease_body("nobody", request={"milli_gpu": 125}), "no user 'nobody'"),
        (lease_body("carol", request={"milli_gpu": 125}, holder="forever"), "nothing would ever give"),
        (lease_body("carol", request={"milli_gpu": 125}, holder="bob/"), "not a server of user carol"),
        (lease_body("carol", profile="cpu", holder="x until 2030-01-01T00:00:00Z"), "ends like an expiry"),
        (lease_body("carol", profile="cpu", expires_at=True), "expires_at: True is not of type 'number'"),
        ([1, 2, 3], "is not of type 'object'"),
    ],
)
def test_malformed_bodies_get_a_400_saying_what_to_change(hub, service, body, expected):
    error = assert_json_error(service.post(hub.api + "leases", json=body, timeout=10), 400)
    assert expected in error["message"]


@pytest.mark.parametrize(
    ("expires_at", "expected"),
    [
        (float("nan"), "expires_at: NaN is not a finite number"),
        (float("inf"), "expires_at: Infinity is not a finite number"),
    ],
)
def test_an_expiry_that_is_not_a_finite_number_gets_a_400(hub, service, expires_at, expected):
    body = json.dumps(lease_body("carol", profile="cpu", expires_at=expires_at))  # NaN, Infinity
    response = service.post(hub.api + "leases", data=body, timeout=10)
    assert expected in assert_json_error(response, 400)["message"]


def test_a_body_that_is_not_json_gets_a_400(hub, service):
    response = service.post(hub.api + "leases", data="{not json", timeout=10)
    assert "not JSON" in assert_json_error(response, 400)["message"]


def test_a_quota_refusal_is_a_409_with_the_quota_sentence(hub, service):
    for _ in range(2):
        granted = service.post(hub.api + "leases", json=lease_body("bob", profile="cpu"), timeout=30)
        assert granted.status_code == 201, granted.text  # CPU-only servers are not rationed
    for _ in range(2):
        granted = service.post(
            hub.api + "leases", json=lease_body("bob", request={"milli_gpu": 125}), timeout=30
        )
        assert granted.status_code == 201, granted.text
    refused = service.post(hub.api + "leases", json=lease_body("bob", request={"milli_gpu": 125}), timeout=30)
    error = assert_json_error(refused, 409)
    assert error["reason"] == "quota"
    assert error["refusal"]["rule"] == "interactive_servers"
    assert error["refusal"]["holder"] == "bob"
    assert error["message"] == error["refusal"]["message"]
    assert error["message"].startswith("user bob already runs 2/2 notebook servers with a GPU slice")

    availability = service.get(hub.api + "availability?user=bob", timeout=10).json()
    slices = {profile["slug"]: profile for profile in availability["profiles"]}
    assert slices["a100-1-8"]["available"] is False
    assert slices["a100-1-8"]["reason"] == error["message"]
    assert slices["a100-1-8"]["quota"]["user"] == {
        "name": "bob",
        "servers": 2,
        "max_servers": 2,
        "milli_gpu": 250,
        "max_milli_gpu": 1000,
    }
    assert slices["cpu"]["available"] is True


def test_no_capacity_is_a_409_with_the_reason(hub, service):
    for _ in range(2):
        granted = service.post(hub.api + "leases", json=lease_body("carol", request={"gpus": 1}), timeout=30)
        assert granted.status_code == 201, granted.text
    for request in ({"gpus": 1}, {"milli_gpu": 125}):
        refused = service.post(hub.api + "leases", json=lease_body("carol", request=request), timeout=30)
        error = assert_json_error(refused, 409)
        assert error["reason"] == "no_capacity"
        assert error["message"].startswith("no ")
    gpus = service.get(hub.api + "gpus", timeout=10).json()["gpus"]
    assert [gpu["milli_free"] for gpu in gpus] == [0, 0]


def test_asking_again_with_the_same_lease_id_returns_the_same_lease(hub, service):
    body = lease_body("alice", request={"milli_gpu": 250})
    first = service.post(hub.api + "leases", json=body, timeout=30)
    again = service.post(hub.api + "leases", json=body, timeout=30)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert len(service.get(hub.api + "leases?user=alice", timeout=10).json()["leases"]) == 1

    changed = dict(body, request={"milli_gpu": 500})
    error = assert_json_error(service.post(hub.api + "leases", json=changed, timeout=30), 409)
    assert "different request" in error["message"]

    service.delete(hub.api + f"leases/{body['lease_id']}", timeout=10).raise_for_status()
    reused = assert_json_error(service.post(hub.api + "leases", json=body, timeout=30), 409)
    assert "already granted and released" in reused["message"]


def test_release_frees_capacity_that_availability_shows(hub, service):
    def a100_eighths() -> int:
        availability = service.get(hub.api + "availability?user=carol", timeout=10).json()
        return {profile["slug"]: profile for profile in availability["profiles"]}["a100-1-8"]["free_slices"]

    before = a100_eighths()
    assert before >= 1
    body = lease_body("carol", profile="a100-1-8")
    assert service.post(hub.api + "leases", json=body, timeout=30).status_code == 201
    assert a100_eighths() == before - 1
    released = service.delete(hub.api + f"leases/{body['lease_id']}", timeout=10)
    assert released.status_code == 200, released.text
    assert released.json()["lease"]["id"] == body["lease_id"]
    assert a100_eighths() == before
    assert_json_error(service.delete(hub.api + "leases/no-such-lease", timeout=10), 404)
    assert_json_error(service.get(hub.api + "leases/no-such-lease", timeout=10), 404)
    assert (
        "no lease '100%'"
        in assert_json_error(service.get(hub.api + "leases/100%25", timeout=10), 404)["message"]
    )


def test_availability_shows_only_the_profiles_of_the_users_groups(hub, service):
    def slugs(session, user: str | None = None) -> set[str]:
        query = f"availability?user={user}" if user else "availability"
        response = session.get(hub.api + query, timeout=10)
        assert response.status_code == 200, response.text
        return {profile["slug"] for profile in response.json()["profiles"]}

    assert "a100-full" in slugs(hub.as_user("alice"))  # alice is in researchers
    assert "a100-full" not in slugs(hub.as_user("bob"))  # bob is in students
    assert "a100-full" not in slugs(service, "carol")  # carol is in no group
    assert "a100-full" in slugs(service, "dana")  # hub admins see every profile
    assert slugs(hub.as_user("bob")) == slugs(service, "bob")
    assert {"cpu", "a100-1-8"} <= slugs(hub.as_user("bob"))
    assert_json_error(hub.as_user("bob").get(hub.api + "availability?user=alice", timeout=10), 403)
    assert_json_error(service.get(hub.api + "availability?user=nobody", timeout=10), 404)
    assert (
        "?user=NAME" in assert_json_error(service.get(hub.api + "availability", timeout=10), 400)["message"]
    )


def test_gpus_are_labelled_simulated_and_holders_are_for_admins_only(hub, service):
    body = lease_body("alice", request={"milli_gpu": 250})
    assert service.post(hub.api + "leases", json=body, timeout=30).status_code == 201
    as_service = service.get(hub.api + "gpus", timeout=10).json()["gpus"]
    assert len(as_service) == 2
    assert all(gpu["label"] == "A100-80GB (simulated)" and gpu["simulated"] for gpu in as_service)
    holders = [holder for gpu in as_service for holder in gpu["holders"]]
    assert holders == [{"lease_id": body["lease_id"], "holder": "alice/", "user": "alice", "milli_gpu": 250}]
    assert sorted(gpu["milli_free"] for gpu in as_service) == [750, 1000]
    as_bob = hub.as_user("bob").get(hub.api + "gpus", timeout=10).json()["gpus"]
    assert all("holders" not in gpu for gpu in as_bob)
    assert [gpu["milli_free"] for gpu in as_bob] == [gpu["milli_free"] for gpu in as_service]
    as_erin = hub.as_user("erin").get(hub.api + "gpus", timeout=10).json()["gpus"]
    assert all("holders" in gpu for gpu in as_erin)
