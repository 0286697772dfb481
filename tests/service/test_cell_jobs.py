"""Cell jobs (what %%submit sends) through the REST API, run by the real service under a real hub."""

from __future__ import annotations

import base64
import json
import stat
import sys

import cloudpickle
import pytest
from harness.jobs import FINAL, get_job, wait_for, wait_for_log
from harness.service_hubs import start_job_hub

from spawner.magic.capture import capture, cell_names, pack

pytestmark = pytest.mark.slow

PYTHON = ".".join(map(str, sys.version_info[:3]))
MAX_CELL_PAYLOAD_BYTES = 200_000


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = start_job_hub(
        tmp_path_factory.mktemp("cell-jobs-hub"),
        f"--JobService.max_cell_payload_bytes={MAX_CELL_PAYLOAD_BYTES}",
    )
    yield hub
    hub.stop()


def cell_payload(cell: str, namespace: dict, tmp_path) -> bytes:
    names = cell_names(cell)
    taken = capture(names.free, namespace, workdir=tmp_path, loaded_modules={})
    return pack(taken, source=cell, filename="<cell>", mode="cell", returns=names.assigned, out_given=False)


def submit_cell(session, hub, payload: bytes, **fields):
    body = {
        "name": "cell",
        "cell": {"payload": base64.b64encode(payload).decode(), "python": PYTHON},
        "gpus": 1,
        "time_limit": "10m",
        **fields,
    }
    return session.post(hub.api + "jobs", json=body, timeout=30)


def test_a_cell_job_runs_and_its_values_come_back_as_a_pickle(hub, tmp_path):
    alice = hub.as_user("alice")
    namespace = {"__name__": "__main__"}
    exec("def area(r):\n    return 3 * r * r\n", namespace)
    namespace["radii"] = [1, 2]
    payload = cell_payload("areas = [area(r) for r in radii]\nprint('areas', areas)\n", namespace, tmp_path)
    response = submit_cell(alice, hub, payload, provenance={"cell": "areas = ...", "workdir": str(tmp_path)})
    assert response.status_code == 201, response.text
    job = response.json()["job"]
    assert job["payload_kind"] == "cell" and job["provenance"]["cell"] == "areas = ..."
    done = wait_for(alice, hub, job["id"], FINAL, timeout=60)
    assert (done["state"], done["exit_code"]) == ("succeeded", 0), wait_for_log(alice, hub, job["id"], "")
    assert "areas [3, 12]" in wait_for_log(alice, hub, job["id"], "areas [3, 12]")

    result = alice.get(hub.api + f"jobs/{job['id']}/result", timeout=30).json()
    assert result["kind"] == "cell" and result["values_available"] is True
    assert (result["values"], result["error"], result["not_returned"]) == (["areas"], None, {})
    values = alice.get(hub.api + f"jobs/{job['id']}/result/values", timeout=30)
    assert values.status_code == 200
    assert values.headers["Content-Type"] == "application/octet-stream"
    assert cloudpickle.loads(values.content) == {"areas": [3, 12]}
    assert hub.as_user("erin").get(hub.api + f"jobs/{job['id']}/result/values", timeout=30).status_code == 200

    key = hub.state_dir / "job-signing.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    files = hub.state_dir / "job-scripts" / job["id"]
    signed = json.loads((files / "cell.json").read_text())
    assert signed["job_id"] == job["id"] and signed["python"] == PYTHON and len(signed["signature"]) == 64
    assert key.read_text().strip() not in (files / "cell.json").read_text()


def test_only_the_owner_and_admins_read_a_cell_jobs_result(hub, tmp_path):
    alice, bob = hub.as_user("alice"), hub.as_user("bob")
    job = submit_cell(alice, hub, cell_payload("secret = 42\n", {}, tmp_path), gpus=0).json()["job"]
    wait_for(alice, hub, job["id"], FINAL, timeout=60)
    for path in (f"jobs/{job['id']}/result", f"jobs/{job['id']}/result/values"):
        response = bob.get(hub.api + path, timeout=30)  # another user's job: as if there were none
        assert response.status_code == 404, response.text
        assert "alice" not in response.json()["message"]
    assert cloudpickle.loads(alice.get(hub.api + f"jobs/{job['id']}/result/values", timeout=30).content) == {
        "secret": 42
    }


def test_a_cell_that_raises_fails_with_its_traceback_and_no_values(hub, tmp_path):
    alice = hub.as_user("alice")
    job = submit_cell(alice, hub, cell_payload("ratio = 1 / 0\n", {}, tmp_path), gpus=0).json()["job"]
    done = wait_for(alice, hub, job["id"], FINAL, timeout=60)
    assert (done["state"], done["exit_code"]) == ("failed", 1)
    result = alice.get(hub.api + f"jobs/{job['id']}/result", timeout=30).json()
    assert result["values_available"] is False and result["values"] == []
    assert (result["error"]["type"], result["error"]["message"]) == ("ZeroDivisionError", "division by zero")
    assert 'File "<cell>", line 1' in result["error"]["traceback"]
    missing = alice.get(hub.api + f"jobs/{job['id']}/result/values", timeout=30)
    assert missing.status_code == 404
    assert "failed without returning values" in missing.json()["message"]


def test_a_script_job_has_no_values_and_says_why(hub):
    alice = hub.as_user("alice")
    body = {"name": "script", "script": "print('hi')\n", "gpus": 0}
    job = alice.post(hub.api + "jobs", json=body, timeout=30).json()["job"]
    wait_for(alice, hub, job["id"], FINAL, timeout=60)
    result = alice.get(hub.api + f"jobs/{job['id']}/result", timeout=30).json()
    assert (result["kind"], result["values_available"], result["error"]) == ("script", False, None)
    missing = alice.get(hub.api + f"jobs/{job['id']}/result/values", timeout=30)
    assert missing.status_code == 404 and "only %%submit cells return values" in missing.json()["message"]


@pytest.mark.parametrize(
    ("cell", "says"),
    [
        ({"payload": "not base64!", "python": PYTHON}, "cell/payload: not base64"),
        (
            {"payload": base64.b64encode(bytes(300_000)).decode(), "python": PYTHON},
            "cell/payload is 293 KiB; the limit is 195.3 KiB — save large data to a file",
        ),
        ({"payload": "eA==", "python": "three"}, "cell/python: 'three' is not a Python version"),
        ({"payload": "eA==", "python": PYTHON, "source": "x"}, "'source' was unexpected"),
    ],
)
def test_a_bad_cell_payload_gets_a_400_saying_what_to_change(hub, cell, says):
    body = {"name": "bad", "cell": cell, "gpus": 0}
    response = hub.as_user("alice").post(hub.api + "jobs", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert says in response.json()["message"]


def test_a_body_with_both_or_neither_of_script_and_cell_is_refused(hub):
    alice = hub.as_user("alice")
    for extra in ({}, {"script": "print(1)\n", "cell": {"payload": "eA==", "python": PYTHON}}):
        response = alice.post(hub.api + "jobs", json={"name": "x", "gpus": 0, **extra}, timeout=30)
        assert response.status_code == 400
        assert "give exactly one of script" in response.json()["message"]


def test_the_values_of_a_running_cell_are_not_there_yet(hub, tmp_path):
    alice = hub.as_user("alice")
    payload = cell_payload("import time\nprint('started', flush=True)\ntime.sleep(600)\n", {}, tmp_path)
    job = submit_cell(alice, hub, payload, gpus=0).json()["job"]
    wait_for_log(alice, hub, job["id"], "started", timeout=60)
    response = alice.get(hub.api + f"jobs/{job['id']}/result/values", timeout=30)
    assert response.status_code == 404 and "it is still running" in response.json()["message"]
    assert alice.post(hub.api + f"jobs/{job['id']}/cancel", timeout=60).json()["job"]["state"] == "cancelled"
    assert get_job(alice, hub, job["id"])["job"]["state"] == "cancelled"
