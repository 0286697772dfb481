"""``POST jobs`` with an ``Idempotency-Key``: a retry after a lost answer creates nothing twice.

Against the real service: the same key from the same user answers the job it created (200), a
different body under it is a 409, keys are per user. Then the lost answer itself: a proxy in front
of the hub stores-and-drops the first answer (a 503, as the hub's proxy answers while the service
restarts), and the client sends the submission again under its key.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from harness.jobs import FINAL, wait_for
from harness.service_hubs import start_job_hub

from spawner.client import GPUSliceClient

pytestmark = pytest.mark.slow

BODY = {"name": "once", "script": "print('ran once')\n", "gpus": 1, "time_limit": "10m"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = start_job_hub(tmp_path_factory.mktemp("idempotency-hub"))
    yield hub
    hub.stop()


def post(session, hub, body: dict, key: str | None) -> requests.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    return session.post(hub.api + "jobs", json=body, headers=headers, timeout=30)


def named(session, hub, name: str) -> list[dict]:
    return [job for job in session.get(hub.api + "jobs", timeout=30).json()["jobs"] if job["name"] == name]


def test_the_same_key_answers_the_job_it_created(hub):
    alice = hub.as_user("alice")
    key = str(uuid.uuid4())
    body = {**BODY, "name": f"once {key}"}
    first = post(alice, hub, body, key)
    assert first.status_code == 201, first.text
    # The same submission again (the time limit written another way is the same request).
    again = post(alice, hub, {**body, "time_limit": 600}, key)
    assert again.status_code == 200, again.text
    assert again.json()["job"]["id"] == first.json()["job"]["id"]
    assert len(named(alice, hub, body["name"])) == 1
    done = wait_for(alice, hub, first.json()["job"]["id"], FINAL)
    # Still answered once it has run, as it is now.
    late = post(alice, hub, body, key)
    assert (late.status_code, late.json()["job"]["state"]) == (200, done["state"])


def test_another_body_under_a_used_key_is_a_conflict(hub):
    alice = hub.as_user("alice")
    key = str(uuid.uuid4())
    first = post(alice, hub, {**BODY, "name": f"first {key}"}, key)
    other = post(alice, hub, {**BODY, "name": f"other {key}"}, key)
    assert other.status_code == 409, other.text
    message = other.json()["message"]
    assert f"Idempotency-Key '{key}' was used before" in message
    assert first.json()["job"]["id"] in message and "a new submission needs a new key" in message
    assert named(alice, hub, f"other {key}") == []


def test_keys_are_each_users_own_and_must_be_keys(hub):
    key = str(uuid.uuid4())
    alice = post(hub.as_user("alice"), hub, {**BODY, "name": f"shared {key}"}, key)
    erin = post(hub.as_user("erin"), hub, {**BODY, "name": f"shared {key}"}, key)
    assert (alice.status_code, erin.status_code) == (201, 201)
    assert alice.json()["job"]["id"] != erin.json()["job"]["id"]
    bad = post(hub.as_user("alice"), hub, BODY, "not a key")
    assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["message"]
    assert post(hub.as_user("alice"), hub, {**BODY, "name": f"keyless {key}"}, None).status_code == 201


@pytest.fixture
def lossy_proxy(hub) -> Iterator[str]:
    """The hub's URL behind a proxy that loses the answer to the first ``POST jobs`` (a 503)."""
    lost = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def forward(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            headers = {name: value for name, value in self.headers.items() if name.lower() != "host"}
            answer = requests.request(
                method, hub.url + self.path, data=self.rfile.read(length), headers=headers, timeout=60
            )
            status, data = answer.status_code, answer.content
            if method == "POST" and self.path.endswith("/jobs") and not lost:
                lost.append(answer.json())  # the job was queued; its answer is lost on the way
                status, data = 503, b"<html><title>503: Service Unavailable</title></html>"
            self.send_response(status)
            self.send_header("Content-Type", answer.headers.get("Content-Type", "text/html"))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self.forward("GET")

        def do_POST(self) -> None:
            self.forward("POST")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/services/gpuslice/"
    server.shutdown()
    server.server_close()


def test_a_submission_whose_answer_was_lost_is_queued_once(hub, lossy_proxy):
    token = hub.token_for("alice")
    client = GPUSliceClient(lossy_proxy, token, retry_delays_s=(0.2, 0.2))
    name = f"lost answer {uuid.uuid4()}"
    retries = []
    answer = client.submit("print(1)\n", name=name, on_retry=lambda error, _: retries.append(error.status))
    assert retries == [503]
    alice = hub.as_user("alice")
    (job,) = named(alice, hub, name)
    assert answer["job"]["id"] == job["id"]
    done = wait_for(alice, hub, job["id"], FINAL)
    assert done["state"] == "succeeded"
