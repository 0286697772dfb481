"""Run ends from a watch, and finished Jobs removed after the service kept their end, on the real
control plane.

The service here polls its running jobs only once an hour (``BatchScheduler.resync_seconds``), so
a job that reaches its end state within the test was seen ending by the executor's watch of its
Jobs (:meth:`KubeJobExecutor.run_ends`). Its Job gets ``ttlSecondsAfterFinished`` once the log is
copied, and the real controller manager's TTL controller deletes it; the job stays succeeded, with
its log, and a restarted service's executor still reads it as ended, not lost.
"""

from __future__ import annotations

import uuid

import pytest
from harness.jobs import SLEEPS, get_job, submit, wait_for, wait_for_log, wait_until

from spawner.enforce.kube_objects import job_name
from spawner.service.executor import ExecutionState
from spawner.service.executor.kube import KubeJobExecutor

from .control_plane import JOB_LOG_LINES
from .test_control_plane import api
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
TTL_SECONDS = 1


@pytest.fixture(scope="module")
def watch_hub(cluster, tmp_path_factory):
    """A hub whose service polls running jobs hourly and keeps finished Jobs one second."""
    tag = uuid.uuid4().hex[:8]
    run_async(create_node(cluster, service_node(f"svc-w-{tag}", tag)))
    state_dir = tmp_path_factory.mktemp("kube-watch-hub")
    logs_dir = state_dir / "job-logs"
    hub = start_kube_hub(
        cluster,
        tag,
        state_dir,
        extra_args=[
            "--BatchScheduler.resync_seconds=3600",
            f"--KubeJobExecutor.ttl_seconds_after_finished={TTL_SECONDS}",
            f"--KubeJobExecutor.logs_dir={logs_dir}",
        ],
    )
    hub.job_logs_dir = logs_dir
    yield hub
    hub.stop()
    run_async(delete_node(cluster, f"svc-w-{tag}"))


async def read_job(kubeconfig: str, run_id: str) -> dict | None:
    from kubernetes_asyncio import client

    async with await api(kubeconfig) as api_client:
        response = await client.BatchV1Api(api_client).read_namespaced_job(
            job_name(run_id), "default", _preload_content=False
        )
        return None if response.status == 404 else await response.json()


def test_an_end_is_seen_by_the_watch_and_the_finished_job_is_removed_after_its_log_is_kept(
    watch_hub, cluster
):
    hub = watch_hub
    alice = hub.as_user("alice")
    job = submit(alice, hub, SLEEPS)
    run_id = wait_for(alice, hub, job["id"], ["running"], timeout=JOB_WAIT_S)["lease_id"]
    pod = running_pod(hub, cluster, run_id)
    assert run_async(read_job(cluster, run_id))["spec"].get("ttlSecondsAfterFinished") is None, (
        "no TTL while the run goes on: a Job finishing while the service is down must wait for it"
    )

    run_async(end_process(cluster, pod, 0))
    # Polled hourly: only the watch can tell the service that the run ended.
    ended = wait_for(alice, hub, job["id"], ["succeeded", "failed"], timeout=JOB_WAIT_S)
    assert (ended["state"], ended["exit_code"]) == ("succeeded", 0), ended

    # The log was copied, then the TTL set; the real TTL controller deletes the Job and its pod.
    wait_until(
        hub, "the finished Job deleted", lambda: run_async(read_job(cluster, run_id)) is None, JOB_WAIT_S
    )
    wait_until(hub, "its pod deleted", lambda: not run_async(job_pods(cluster, run_id)), JOB_WAIT_S)
    assert get_job(alice, hub, job["id"])["job"]["state"] == "succeeded"
    assert JOB_LOG_LINES.splitlines()[0] in wait_for_log(alice, hub, job["id"], "epoch 2")

    # A restarted service's executor (same logs_dir, new process state) reads the end, not "lost".
    async def after_restart():
        executor = KubeJobExecutor(kubeconfig=cluster, namespace="default", logs_dir=str(hub.job_logs_dir))
        try:
            return await executor.status(run_id)
        finally:
            await executor.close()

    status = run_async(after_restart())
    assert (status.state, status.exit_code, status.stopped) == (ExecutionState.exited, 0, False)


def test_a_cancelled_jobs_suspended_job_is_deleted_once_its_end_is_kept(watch_hub, cluster):
    hub = watch_hub
    alice = hub.as_user("alice")
    job = submit(alice, hub, SLEEPS)
    run_id = wait_for(alice, hub, job["id"], ["running"], timeout=JOB_WAIT_S)["lease_id"]
    running_pod(hub, cluster, run_id)
    assert alice.post(hub.api + f"jobs/{job['id']}/cancel", timeout=60).status_code == 200
    # Suspended, a stopped Job never finishes, so no TTL would remove it: the executor does.
    wait_until(
        hub, "the stopped Job deleted", lambda: run_async(read_job(cluster, run_id)) is None, JOB_WAIT_S
    )
    assert get_job(alice, hub, job["id"])["job"]["state"] == "cancelled"
    assert KubeJobExecutor(logs_dir=str(hub.job_logs_dir)).end_path(run_id).exists()
