"""Many lease requests at once never grant beyond the GPUs or beyond a quota."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

pytestmark = pytest.mark.slow


def ask_all(hub, bodies: list[dict]) -> list[requests.Response]:
    """POST every body at once from a thread pool, each thread with its own connection."""

    def ask(body: dict) -> requests.Response:
        return hub.client(hub.service_token).post(hub.api + "leases", json=body, timeout=60)

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(ask, bodies))


def bodies(user: str, request: dict, count: int) -> list[dict]:
    return [
        {"lease_id": f"{user}-{uuid.uuid4().hex}", "user": user, "holder": f"{user}/{n}", "request": request}
        for n in range(count)
    ]


def assert_within_capacity(hub, service) -> None:
    gpus = service.get(hub.api + "gpus", timeout=10).json()["gpus"]
    for gpu in gpus:
        held = sum(holder["milli_gpu"] for holder in gpu["holders"])
        assert held <= 1000, gpu
        assert gpu["milli_free"] == 1000 - held


def test_concurrent_requests_never_exceed_capacity(hub, service):
    # Two simulated 80 GB GPUs hold exactly eight quarters; carol's quota allows far more.
    responses = ask_all(hub, bodies("carol", {"milli_gpu": 250}, 24))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] * 8 + [409] * 16, [response.text for response in responses]
    refused = [response.json() for response in responses if response.status_code == 409]
    assert {error["reason"] for error in refused} == {"no_capacity"}
    assert_within_capacity(hub, service)
    assert len(service.get(hub.api + "leases?user=carol", timeout=10).json()["leases"]) == 8


def test_concurrent_requests_never_exceed_a_quota(hub, service):
    # bob may run two servers with a GPU slice; the GPUs would take sixteen eighths.
    responses = ask_all(hub, bodies("bob", {"milli_gpu": 125}, 20))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] * 2 + [409] * 18, [response.text for response in responses]
    refused = [response.json() for response in responses if response.status_code == 409]
    assert {error["refusal"]["rule"] for error in refused} == {"interactive_servers"}
    assert len(service.get(hub.api + "leases?user=bob", timeout=10).json()["leases"]) == 2


def test_concurrent_mixed_users_stay_within_capacity_and_quota(hub, service):
    mixed = bodies("carol", {"milli_gpu": 250}, 16) + bodies("bob", {"milli_gpu": 125}, 8)
    responses = ask_all(hub, mixed)
    granted = [response.json()["lease"] for response in responses if response.status_code == 201]
    others = [response for response in responses if response.status_code != 201]
    assert all(response.status_code == 409 for response in others), [r.text for r in others]
    assert sum(1 for lease in granted if lease["user"] == "bob") <= 2
    assert sum(share["milli_gpu"] for lease in granted for share in lease["shares"]) <= 2000
    assert_within_capacity(hub, service)
