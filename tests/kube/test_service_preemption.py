"""A guarantee preemption through the running service in Kubernetes mode, on the real control plane.

One training node with two GPUs, the service's only one. Students (bob) have no batch guarantee,
so bob's job runs on borrowed GPUs; researchers (alice) are guaranteed both. When alice submits,
the scheduler preempts bob's job: its Job is suspended and its pod deleted with the grace period,
the job goes back to the queue, alice's job runs, and bob's runs again (a new Job) once she is done.
"""

from __future__ import annotations

import uuid

import pytest
from harness.jobs import SLEEPS, events, get_job, submit, wait_for
from harness.service_hubs import quotas_yaml

from .test_service import (
    JOB_WAIT_S,
    create_node,
    delete_node,
    end_process,
    job_pods,
    run_async,
    running_pod,
    service_node,
    start_kube_hub,
)

pytestmark = pytest.mark.slow

QUOTAS = quotas_yaml(
    """\
    researchers:
      batch:
        guaranteed_gpus: 2
    students:
      batch:
        borrow_gpus: 2
"""
)


@pytest.fixture(scope="module")
def preemption_hub(cluster, tmp_path_factory):
    tag = uuid.uuid4().hex[:8]
    node = f"svc-p-{tag}"
    run_async(create_node(cluster, service_node(node, tag, gpus=2)))
    hub = start_kube_hub(
        cluster,
        tag,
        tmp_path_factory.mktemp("kube-preemption-hub"),
        QUOTAS,
        ["--BatchScheduler.preemption_grace_seconds=5"],
    )
    yield hub, node
    hub.stop()
    run_async(delete_node(cluster, node))


def test_a_guarantee_preemption_deletes_the_borrowers_pod_and_requeues_it(preemption_hub, cluster):
    hub, node = preemption_hub
    alice, bob = hub.as_user("alice"), hub.as_user("bob")
    borrower = submit(bob, hub, SLEEPS, gpus=2, name="borrower")
    running = wait_for(bob, hub, borrower["id"], ["running"], timeout=JOB_WAIT_S)
    assert (running["node"], running["borrowed"]) == (node, True)
    first_run = running["lease_id"]
    running_pod(hub, cluster, first_run)

    owner = submit(alice, hub, SLEEPS, gpus=2, name="guaranteed")
    # The borrower's Job is stopped and its pod deleted (with its grace) before the job waits in
    # the queue again: the GPUs are never lent while its process may still run.
    wait_for(bob, hub, borrower["id"], ["queued"], timeout=JOB_WAIT_S)
    assert not run_async(job_pods(cluster, first_run))
    preemption = [
        event for event in get_job(bob, hub, borrower["id"])["events"] if event["to_state"] == "preempted"
    ]
    assert len(preemption) == 1
    assert "group researchers needs its guaranteed GPUs back" in preemption[0]["reason"], preemption
    guaranteed = wait_for(alice, hub, owner["id"], ["running"], timeout=JOB_WAIT_S)
    assert (guaranteed["node"], guaranteed["borrowed"]) == (node, False)
    owner_pod = running_pod(hub, cluster, guaranteed["lease_id"])

    # Once alice's job ends, bob's runs again, as a new Job of its second run.
    run_async(end_process(cluster, owner_pod, 0))
    assert wait_for(alice, hub, owner["id"], ["succeeded"], timeout=JOB_WAIT_S)["exit_code"] == 0
    again = wait_for(bob, hub, borrower["id"], ["running"], timeout=JOB_WAIT_S)
    assert again["lease_id"] != first_run and again["attempts"] == 2
    running_pod(hub, cluster, again["lease_id"])
    assert events(bob, hub, borrower["id"]) == ["queued", "running", "preempted", "queued", "running"]
