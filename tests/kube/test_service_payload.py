"""A cell job's payload fetched by its runner from the service with a token of that job and run.

With ``KubeJobExecutor.payload_service_url`` the Job's container first runs ``python -m
spawner.service.executor.kube fetch-payload`` (URL and token in its environment), then the runner on
what it fetched. kwok runs no container, so the test runs the pod's own command, with the pod's
own environment, here: the payload comes over HTTP through the hub's proxy, its signature is
checked by the runner, and the values it returns reach the service as from a real pod.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid

import pytest
from harness.jobs import get_job, wait_for

from spawner.magic.capture import capture, cell_names, pack
from spawner.service.executor.kube import PAYLOAD_MOUNT_PATH, PAYLOAD_TOKEN_VARIABLE, PAYLOAD_URL_VARIABLE

from .test_service import (
    JOB_WAIT_S,
    create_node,
    delete_node,
    end_process,
    run_async,
    running_pod,
    service_node,
    start_kube_hub,
)

pytestmark = pytest.mark.slow
PYTHON = ".".join(map(str, sys.version_info[:3]))


@pytest.fixture(scope="module")
def payload_hub(cluster, tmp_path_factory):
    tag = uuid.uuid4().hex[:8]
    node = f"svc-c-{tag}"
    run_async(create_node(cluster, service_node(node, tag)))
    hub = start_kube_hub(cluster, tag, tmp_path_factory.mktemp("kube-payload-hub"), payload_from_service=True)
    yield hub
    hub.stop()
    run_async(delete_node(cluster, node))


def submit_cell(session, hub, cell: str, tmp_path) -> dict:
    names = cell_names(cell)
    taken = capture(names.free, {}, workdir=tmp_path, loaded_modules={})
    payload = pack(
        taken, source=cell, filename="<cell>", mode="cell", returns=names.assigned, out_given=False
    )
    body = {
        "name": "cell",
        "cell": {"payload": base64.b64encode(payload).decode(), "python": PYTHON},
        "gpus": 1,
        "time_limit": "10m",
    }
    response = session.post(hub.api + "jobs", json=body, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["job"]


def test_the_runner_fetches_its_payload_with_its_run_token_and_nothing_else_opens_it(
    payload_hub, cluster, tmp_path
):
    hub = payload_hub
    alice = hub.as_user("alice")
    job = submit_cell(alice, hub, "answer = 6 * 7\nprint('answer', answer)\n", tmp_path)
    running = wait_for(alice, hub, job["id"], ["running"], timeout=JOB_WAIT_S)
    pod = running_pod(hub, cluster, running["lease_id"])
    container = pod["spec"]["containers"][0]
    environment = {variable["name"]: variable["value"] for variable in container["env"]}
    url = environment[PAYLOAD_URL_VARIABLE]
    assert url == f"{hub.api}jobs/{job['id']}/payload"
    assert "fetch-payload" in container["command"]
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    assert volumes["payload"]["emptyDir"] == {}

    # Nothing but the run's token opens the payload: no token, a hub token, another run's token.
    token = environment[PAYLOAD_TOKEN_VARIABLE]
    tampered = token[:-1] + ("1" if token.endswith("0") else "0")  # one hex digit off, never the same
    refused = [
        alice.get(url, timeout=30),
        hub.client(None).get(url, timeout=30),
        hub.client(None).get(url, headers={"Authorization": f"token {tampered}"}, timeout=30),
        hub.client(None).get(
            url.replace(job["id"], "job-000000000000"),
            headers={"Authorization": f"token {token}"},
            timeout=30,
        ),
    ]
    for answer in refused:
        assert answer.status_code == 403, answer.text
        assert "never a hub token" in answer.json()["message"]

    # The pod's own command and environment, run here: fetch, verify, run, return the values.
    local = tmp_path / "payload"
    command = [part.replace(PAYLOAD_MOUNT_PATH, str(local)) for part in container["command"][3:]]
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("GPUSLICE_")}
    ran = subprocess.run(
        command, env={**inherited, **environment}, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    assert "answer 42" in ran.stdout
    assert (local / "cell.json").exists()

    run_async(end_process(cluster, pod, 0))
    assert (
        wait_for(alice, hub, job["id"], ["succeeded", "failed"], timeout=JOB_WAIT_S)["state"] == "succeeded"
    )
    result = alice.get(hub.api + f"jobs/{job['id']}/result", timeout=30).json()
    assert (result["values_available"], result["values"]) == (True, ["answer"]), result
    # Once the run has ended, its token opens nothing.
    ended = hub.client(None).get(url, headers={"Authorization": f"token {token}"}, timeout=30)
    assert ended.status_code == 403
    assert get_job(alice, hub, job["id"])["job"]["state"] == "succeeded"


def test_a_runner_refused_its_payload_says_so_and_exits_as_for_a_bad_payload(tmp_path):
    from spawner.service.executor.kube import EXIT_NO_PAYLOAD, main

    os.environ[PAYLOAD_URL_VARIABLE] = "http://127.0.0.1:9/nowhere"
    os.environ[PAYLOAD_TOKEN_VARIABLE] = "0" * 64
    assert main(["fetch-payload", str(tmp_path / "cell.json"), "--", "true"]) == EXIT_NO_PAYLOAD
    # The URL and token are taken out of the environment the command would inherit.
    assert PAYLOAD_URL_VARIABLE not in os.environ and PAYLOAD_TOKEN_VARIABLE not in os.environ
    assert main(["fetch-payload"]) == 2
