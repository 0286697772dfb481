"""The Job executor and the node inventory against a real API server, controller manager and scheduler.

The nodes are kwok's: no container runs, so a pod's process "ends" when a test sets the annotation
``gpuslice.test/exit-code`` on it (``kwok_stages.yaml``); everything else (the Job controller
creating pods, the scheduler binding them by their GPU requests, deletion, suspension, deadlines)
is the real control plane's.
"""

from __future__ import annotations

import asyncio
import textwrap
import uuid
from pathlib import Path

import pytest

from spawner.inventory.kube import ClusterNodes
from spawner.service.executor import ExecutionSpec, ExecutionState, UnknownJob
from spawner.service.executor.kube import KubeJobExecutor

from .conftest import DEV_NODE, POOL_LABEL, TRAIN_NODES, gpu_node, make_node
from .control_plane import JOB_LOG_LINES

pytestmark = pytest.mark.slow
WAIT_S = 60


async def api(kubeconfig: str):
    from kubernetes_asyncio import client, config

    configuration = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return client.ApiClient(configuration)


async def eventually(what: str, check, timeout: float = WAIT_S):
    """``await check()`` until it returns something true; fails naming ``what`` after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what} (last: {result!r})")
        await asyncio.sleep(0.3)


def profiles_dir(tmp_path: Path, node_selector: dict[str, str]) -> Path:
    folder = tmp_path / "profiles"
    folder.mkdir(exist_ok=True)
    selector = ", ".join(f"{key}: '{value}'" for key, value in node_selector.items())
    (folder / "default.yaml").write_text(
        textwrap.dedent(
            f"""
            kubernetes:
              pools:
                train: {{backend: pinned, node_selector: {{{selector}}}}}
            profiles:
              - {{slug: cpu, display_name: CPU only}}
            """
        )
    )
    return folder


def executor(kubeconfig: str, tmp_path: Path, node_selector: dict[str, str] | None = None) -> KubeJobExecutor:
    return KubeJobExecutor(
        kubeconfig=kubeconfig,
        namespace="default",
        image="registry.invalid/gpuslice-trainer:test",
        profiles_dir=str(profiles_dir(tmp_path, node_selector or {POOL_LABEL: "train"})),
        logs_dir=str(tmp_path / "logs"),
        mount_home=False,
        grace_seconds=5,
    )


def spec(gpus: int = 2, time_limit_s: float = 3600, node: str = TRAIN_NODES[0]) -> ExecutionSpec:
    """A run on ``gpus`` GPUs of ``node`` (the executor pins the pod to the node they are on)."""
    job_id = f"job-{uuid.uuid4().hex[:10]}"
    return ExecutionSpec(
        job_id=job_id,
        owner="alice",
        argv=["python", "-m", "spawner.service.runner", f"/srv/gpuslice/jobs/{job_id}/cell.json"],
        workdir="/home/jovyan",
        environment={"GPUSLICE_RESULTS": f"/srv/gpuslice/jobs/{job_id}/results"},
        gpu_uuids=[f"GPU-kube-{node}-{index}" for index in range(gpus)],
        time_limit_s=time_limit_s,
    )


async def running_pod(run: KubeJobExecutor, job_id: str) -> dict:
    async def bound_and_running():
        pods = await run._pods(job_id)
        return pods[0] if pods and pods[0]["status"].get("phase") == "Running" else None

    return await eventually(f"the pod of {job_id} running", bound_and_running)


async def end_process(kubeconfig: str, pod: dict, exit_code: int) -> None:
    """What a container's process ending looks like to the API: kwok writes the terminated state."""
    from kubernetes_asyncio import client

    async with await api(kubeconfig) as api_client:
        patch = {"metadata": {"annotations": {"gpuslice.test/exit-code": str(exit_code)}}}
        await client.CoreV1Api(api_client).patch_namespaced_pod(pod["metadata"]["name"], "default", patch)


async def ended(run: KubeJobExecutor, job_id: str):
    async def check():
        status = await run.status(job_id)
        return status if status.state is not ExecutionState.running else None

    return await eventually(f"job {job_id} ended", check)


def test_the_inventory_reads_the_gpu_nodes_and_follows_a_deleted_one(cluster):
    async def main():
        gone: list[str] = []

        async def on_node_gone(name: str) -> None:
            gone.append(name)

        async with await api(cluster) as api_client:
            from kubernetes_asyncio import client

            nodes = ClusterNodes(api_client, on_node_gone=on_node_gone)
            listed = {node.name: node for node in await nodes.list()}
            assert {DEV_NODE, *TRAIN_NODES} <= set(listed)
            dev = listed[DEV_NODE]
            assert [gpu.model for gpu in dev.gpus] == ["A100-80GB"] * 8
            assert {gpu.memory_mib for gpu in dev.gpus} == {81920}
            assert dev.gpus[0].pools == frozenset({"dev"}) and dev.gpus[0].mig_capable
            assert listed[TRAIN_NODES[0]].gpus[0].pools == frozenset({"train"})

            watching = asyncio.create_task(nodes.watch(timeout_seconds=20))
            try:
                core = client.CoreV1Api(api_client)
                await make_node(core, gpu_node("gpuslice-short-lived", "train"))
                await eventually("the new node seen", lambda: _has(nodes, "gpuslice-short-lived"))
                await core.delete_node("gpuslice-short-lived")
                await eventually("the deleted node reported", lambda: _true(gone == ["gpuslice-short-lived"]))
                assert "gpuslice-short-lived" not in nodes.nodes
            finally:
                watching.cancel()

    asyncio.run(main())


async def _has(nodes: ClusterNodes, name: str) -> bool:
    return name in nodes.nodes


async def _true(value: bool) -> bool:
    return value


def test_a_job_lands_on_a_training_node_with_its_gpus_and_reports_its_exit(cluster, tmp_path):
    async def main():
        run = executor(cluster, tmp_path)
        try:
            job = spec(gpus=2)
            started = await run.start(job)
            assert started.state is ExecutionState.running
            pod = await running_pod(run, job.job_id)
            assert pod["spec"]["nodeName"] in TRAIN_NODES
            container = pod["spec"]["containers"][0]
            assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
            assert container["resources"]["requests"] == {"nvidia.com/gpu": "2"}
            assert container["command"][3:] == job.argv
            assert pod["spec"]["terminationGracePeriodSeconds"] == 5
            assert (await run.status(job.job_id)).state is ExecutionState.running
            # a retried start of the same run changes nothing
            await run.start(job)
            assert [p["metadata"]["name"] for p in await run._pods(job.job_id)] == [pod["metadata"]["name"]]

            await end_process(cluster, pod, 3)
            status = await ended(run, job.job_id)
            assert (status.state, status.exit_code, status.stopped, status.timed_out) == (
                ExecutionState.exited,
                3,
                False,
                False,
            )

            succeeding = spec(gpus=1)
            await run.start(succeeding)
            await end_process(cluster, await running_pod(run, succeeding.job_id), 0)
            status = await ended(run, succeeding.job_id)
            assert (status.state, status.exit_code) == (ExecutionState.exited, 0)
        finally:
            await run.close()

    asyncio.run(main())


def test_cancel_deletes_the_pod_with_its_grace_and_a_restarted_service_finds_every_job(cluster, tmp_path):
    async def main():
        run = executor(cluster, tmp_path)
        cancelled, kept = spec(gpus=1), spec(gpus=1)
        try:
            for job in (cancelled, kept):
                await run.start(job)
                await running_pod(run, job.job_id)
        finally:
            await run.close()

        # The service restarts: a new executor with nothing in memory finds both by their labels.
        restarted = executor(cluster, tmp_path)
        try:
            assert (await restarted.status(cancelled.job_id)).state is ExecutionState.running
            assert (await restarted.status(kept.job_id)).state is ExecutionState.running
            with pytest.raises(UnknownJob):
                await restarted.status("job-never-started")

            # The log is read from the API while the pod runs, and kept after it is gone.
            log, offset = await restarted.read_log(cancelled.job_id)
            assert (log.decode(), offset) == (JOB_LOG_LINES, len(JOB_LOG_LINES))
            assert await restarted.request_stop(cancelled.job_id, grace_s=7) is True
            assert await restarted.request_stop(cancelled.job_id, grace_s=7) is False
            status = await restarted.stop(cancelled.job_id, grace_s=7)
            assert (status.state, status.stopped) == (ExecutionState.exited, True)
            assert await restarted._pods(cancelled.job_id) == []
            assert await restarted.read_log(cancelled.job_id, offset=9) == (
                JOB_LOG_LINES[9:].encode(),
                len(JOB_LOG_LINES),
            )
            job = await restarted._read_job(cancelled.job_id)
            # Suspended (so it starts no pod again), then deleted once its end is kept: a
            # suspended Job never finishes, so no ttlSecondsAfterFinished would remove it.
            assert job is None or (job["spec"]["suspend"] and job["metadata"].get("deletionTimestamp"))
            assert (await restarted.status(cancelled.job_id)).stopped, "its end is kept"
            assert (await restarted.status(kept.job_id)).state is ExecutionState.running

            # A preempted run is requeued and started again under its id: the stopped Job is
            # replaced by a new one whose pod runs.
            await restarted.start(cancelled)
            again = await running_pod(restarted, cancelled.job_id)
            assert (await restarted.status(cancelled.job_id)).state is ExecutionState.running
            assert again["metadata"]["labels"]["gpuslice.io/job-id"] == f"job-2d{cancelled.job_id[4:]}"
        finally:
            await restarted.close()

    asyncio.run(main())


def test_the_executor_follows_job_states_from_a_watch(cluster, tmp_path):
    async def main():
        run = executor(cluster, tmp_path)
        job = spec(gpus=1)
        seen: list[tuple[ExecutionState, int | None]] = []

        async def follow_until_ended():
            async for job_id, status in run.follow(timeout_seconds=30):
                if job_id == job.job_id:
                    seen.append((status.state, status.exit_code))
                    if status.state is not ExecutionState.running:
                        return

        try:
            following = asyncio.create_task(follow_until_ended())
            await run.start(job)
            await end_process(cluster, await running_pod(run, job.job_id), 0)
            await asyncio.wait_for(following, WAIT_S)
            assert seen[0] == (ExecutionState.running, None)
            assert seen[-1] == (ExecutionState.exited, 0)
        finally:
            await run.close()

    asyncio.run(main())


def test_the_time_limit_is_the_jobs_active_deadline(cluster, tmp_path):
    async def main():
        run = executor(cluster, tmp_path)
        try:
            job = spec(gpus=1, time_limit_s=2)
            await run.start(job)
            status = await ended(run, job.job_id)
            assert (status.state, status.timed_out) == (ExecutionState.exited, True)
        finally:
            await run.close()

    asyncio.run(main())


def test_a_node_deleted_under_a_running_job_makes_it_lost(cluster, tmp_path):
    async def main():
        from kubernetes_asyncio import client

        doomed = gpu_node("gpuslice-train-doomed", "train")
        doomed["metadata"]["labels"]["gpuslice.test/doomed"] = "true"
        async with await api(cluster) as api_client:
            core = client.CoreV1Api(api_client)
            await make_node(core, doomed)
        run = executor(cluster, tmp_path, {POOL_LABEL: "train", "gpuslice.test/doomed": "true"})
        try:
            job = spec(gpus=4, node="gpuslice-train-doomed")
            await run.start(job)
            pod = await running_pod(run, job.job_id)
            assert pod["spec"]["nodeName"] == "gpuslice-train-doomed"
            async with await api(cluster) as api_client:
                await client.CoreV1Api(api_client).delete_node("gpuslice-train-doomed")
            status = await ended(run, job.job_id)
            assert (status.state, status.exit_code) == (ExecutionState.lost, None)
        finally:
            await run.close()

    asyncio.run(main())
