"""KubeGPUSpawner's pod and the Job executor's reading of a Job, without a cluster.

The spawner is KubeSpawner's own, configured with a kubeconfig naming no reachable server: building
a pod manifest talks to no API. The Job states are read from Job and pod JSON as the API returns
them.
"""

from __future__ import annotations

import asyncio
import textwrap
from types import SimpleNamespace

import pytest
from jupyterhub.objects import Hub, Server

from spawner.config.profiles import load_profiles
from spawner.service.executor import ExecutionState
from spawner.service.executor.kube import job_status

UNREACHABLE_KUBECONFIG = """
apiVersion: v1
kind: Config
clusters:
- name: nowhere
  cluster: {server: "https://127.0.0.1:9", insecure-skip-tls-verify: true}
users:
- name: nobody
  user: {token: unused}
contexts:
- name: nowhere
  context: {cluster: nowhere, user: nobody, namespace: default}
current-context: nowhere
"""

PROFILES = """
kubernetes:
  pools:
    dev: {backend: mig, node_selector: {gpuslice.io/pool: dev},
          tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]}
profiles:
  - {slug: eighth, display_name: Eighth, milli_gpu: 125, gpu_models: [A100-80GB], image: example/nb:1}
  - {slug: cpu, display_name: CPU, default: true}
"""


@pytest.fixture
def make_spawner(tmp_path, monkeypatch):
    """Makes the spawner (KubeSpawner needs a running event loop to be created)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(UNREACHABLE_KUBECONFIG)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    from kubernetes_asyncio.config import kube_config

    # kubernetes_asyncio read $KUBECONFIG when first imported, perhaps before this test set it.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "p.yaml").write_text(textwrap.dedent(PROFILES))
    from spawner.hub.kube import KubeGPUSpawner

    user = SimpleNamespace(
        name="Ada",
        id=3,
        admin=False,
        groups=[],
        url="/user/Ada/",
        base_url="/",
        escaped_name="Ada",
        server=Server(base_url="/user/Ada/"),
        spawners={},
    )

    def make():
        made = KubeGPUSpawner(
            hub=Hub(),
            user=user,
            api_token="t",
            oauth_client_id="c",
            _mock=True,
            profiles_dir=str(tmp_path / "profiles"),
        )
        made.profile_set = load_profiles(tmp_path / "profiles")
        return made

    # KubeSpawner loads the kubeconfig once per process (an lru_cache): this one names no server,
    # so the tests after these must load theirs again.
    from kubespawner.clients import load_config

    load_config.cache_clear()
    yield make
    load_config.cache_clear()


def test_the_pod_holds_the_slice_of_the_pools_backend_and_no_host_device(make_spawner):
    async def main():
        spawner = make_spawner()
        spawner.apply_profile(spawner.profile_set.by_slug["eighth"])
        spawner.lease_id = "server-abc"
        spawner.slice_env = {
            "CUDA_VISIBLE_DEVICES": "GPU-kube-n-0",
            "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.12",
            "JUPYTER_PATH": "/usr/lib/python3/site-packages/spawner/enforce/jupyter_data",
        }
        first = await spawner.get_pod_manifest()
        second = await spawner.get_pod_manifest()
        return first, second

    first, second = asyncio.run(main())
    assert first.metadata.name == "jupyter--41da", (
        "names are escaped with escapism, as KubeSpawner's escape scheme"
    )
    assert first.spec.containers[0].image == "example/nb:1"
    assert first.spec.containers[0].resources.limits["nvidia.com/mig-1g.10gb"] == "1"
    assert first.spec.node_selector == {"gpuslice.io/pool": "dev"}
    assert first.metadata.labels["gpuslice.io/lease"] == "server-2dabc"
    env = {item.name: item.value for item in first.spec.containers[0].env}
    assert "CUDA_VISIBLE_DEVICES" not in env and env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.12"
    assert "JUPYTER_PATH" not in env, "the image's own JUPYTER_PATH, not the hub's install path"
    assert len(second.spec.tolerations) == len(first.spec.tolerations) == 1, (
        "a second start adds nothing twice"
    )


def pod(exit_code: int | None) -> dict:
    state = {"terminated": {"exitCode": exit_code}} if exit_code is not None else {"running": {}}
    return {"status": {"containerStatuses": [{"state": state}]}}


def job(conditions=(), annotations=None, active=0) -> dict:
    return {
        "metadata": {"annotations": annotations or {}},
        "status": {
            "active": active,
            "conditions": [{"type": kind, "status": "True", "reason": reason} for kind, reason in conditions],
        },
    }


@pytest.mark.parametrize(
    ("the_job", "pods", "expected"),
    [
        (job(active=1), [pod(None)], (ExecutionState.running, None, False, False)),
        (job([("Complete", "")]), [pod(0)], (ExecutionState.exited, 0, False, False)),
        (job([("Failed", "BackoffLimitExceeded")]), [pod(3)], (ExecutionState.exited, 3, False, False)),
        (job([("Failed", "BackoffLimitExceeded")]), [pod(137)], (ExecutionState.exited, -9, False, False)),
        (job([("Failed", "DeadlineExceeded")]), [], (ExecutionState.exited, -15, True, False)),
        (job([("Failed", "BackoffLimitExceeded")]), [], (ExecutionState.lost, None, False, False)),
        (job(annotations={"gpuslice.io/stopped": "true"}), [], (ExecutionState.exited, -15, False, True)),
        (
            job(annotations={"gpuslice.io/stopped": "true"}, active=1),
            [pod(None)],
            (ExecutionState.running, None, False, True),
        ),
    ],
)
def test_a_jobs_state_is_read_from_its_conditions_and_its_pods_exit(the_job, pods, expected):
    status = job_status(the_job, pods)
    assert (status.state, status.exit_code, status.timed_out, status.stopped) == expected


def test_the_form_says_what_a_shared_or_kai_pool_does_not_enforce(make_spawner, tmp_path):
    (tmp_path / "profiles" / "p.yaml").write_text(
        textwrap.dedent(PROFILES).replace("dev: {backend: mig,", "dev: {backend: shared,")
    )

    async def main():
        visible, preselected = await make_spawner().visible_profiles()
        return {profile.slug: profile.description for profile in visible}, preselected.slug

    descriptions, preselected = asyncio.run(main())
    assert descriptions == {
        "eighth": "GPU memory is not isolated under time-slicing: another server on the card can use it up.",
        "cpu": "",
    }
    assert preselected == "cpu"


def test_a_broken_watch_of_run_ends_makes_every_pass_poll_until_it_is_back(tmp_path):
    """The scheduler's fallback: the executor's watch cannot reach its cluster (a kubeconfig naming
    no server), so the scheduler polls every running job at each pass instead of hourly."""
    from spawner.service.executor.kube import KubeJobExecutor
    from spawner.service.scheduling import BatchScheduler

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(UNREACHABLE_KUBECONFIG)
    executor = KubeJobExecutor(kubeconfig=str(kubeconfig), namespace="default", logs_dir=str(tmp_path))
    scheduler = BatchScheduler(None, None, executor, resync_seconds=3600, watch_retry_seconds=0.1)

    async def main():
        scheduler._watching = True  # as if the watch had been open
        assert scheduler._poll_due() is True, "the first pass polls"
        assert scheduler._poll_due() is False, "then only an end reported by the watch, or the resync"
        following = asyncio.get_running_loop().create_task(scheduler.follow_run_ends())
        try:
            for _ in range(200):
                if not scheduler._watching:
                    break
                await asyncio.sleep(0.05)
            return scheduler._watching, scheduler._poll_due(), scheduler._poll_due()
        finally:
            following.cancel()
            await executor.close()

    watching, first, second = asyncio.run(main())
    assert (watching, first, second) == (False, True, True)
