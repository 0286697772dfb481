"""KubeGPUSpawner driven as the hub drives it, with a real gpuslice service and a real control plane.

The service is the real one (a test hub's, on a static inventory naming the kwok nodes); the
spawner is created here and called as JupyterHub calls it (``start``, ``poll``, ``stop``,
``get_state``/``load_state``), up to the pod running: no container runs in a kwok pod, so nothing
would answer at its address.
"""

from __future__ import annotations

import asyncio
import textwrap
from types import SimpleNamespace

import pytest
from harness.service_hubs import KEEP_LEASES, quotas_yaml, service_hub, started
from jupyterhub.objects import Hub, Server

from spawner.hub.kube import KubeGPUSpawner
from spawner.hub.mixin import SpawnRefused

from .conftest import DEV_NODE, POOL_LABEL, TRAIN_NODES

pytestmark = pytest.mark.slow

PROFILES = f"""
kubernetes:
  pools:
    dev: {{backend: mig, node_selector: {{{POOL_LABEL}: dev}}}}
    train: {{backend: pinned, node_selector: {{{POOL_LABEL}: train}}}}
profiles:
  - slug: cpu
    display_name: CPU only
    default: true
    cpu_limit: 1
  - slug: a100-1-8
    display_name: PyTorch · 1/8 A100
    milli_gpu: 125
    gpu_models: [A100-80GB]
    cpu_guarantee: 1
    cpu_limit: 2
    mem_guarantee: 1G
    mem_limit: 2G
    image: registry.invalid/gpuslice-notebook:test
  - slug: a100-1-8-images
    display_name: 1/8 A100 · choice of image
    milli_gpu: 125
    gpu_models: [A100-80GB]
    cpu_limit: 1
    profile_options:
      image:
        display_name: Image
        choices:
          torch:
            display_name: PyTorch
            kubespawner_override: {{image: registry.invalid/torch:1}}
          jax:
            display_name: JAX
            kubespawner_override:
              image: registry.invalid/jax:2
              environment: {{XLA_FLAGS: --xla_gpu_strict}}
"""
QUOTAS = quotas_yaml(
    """\
    researchers:
      interactive:
        milli_gpu: 125
"""
)
"""The researchers (alice and bob) may hold one 1/8 slice between them."""


def gpus_yaml() -> str:
    nodes = [
        f"  - {{name: {DEV_NODE}, cpu: 64, memory_mib: 524288, pools: dev, gpus: [{{count: 8, "
        "model: A100-80GB, memory_mib: 81920}]}"
    ]
    nodes += [
        f"  - {{name: {name}, cpu: 64, memory_mib: 524288, pools: train, gpus: [{{count: 8, "
        "model: A100-80GB, memory_mib: 81920}]}"
        for name in TRAIN_NODES
    ]
    return "nodes:\n" + "\n".join(nodes) + "\n"


@pytest.fixture(scope="module")
def gpuslice_service(tmp_path_factory, cluster):
    """A started test hub whose service owns the kwok nodes' GPUs, with the test profiles."""
    state_dir = tmp_path_factory.mktemp("kube-service")
    hub = service_hub(state_dir, quotas=QUOTAS, service_args=[KEEP_LEASES], gpus_yaml=gpus_yaml())
    (state_dir / "profiles" / "default.yaml").write_text(textwrap.dedent(PROFILES))
    hub.env["GPUSLICE_GROUPS"] = "researchers=alice,bob"
    started(hub)
    yield hub
    hub.stop()


class HubUser:
    """What a spawner reads of its user: name, groups, admin flag, URLs (JupyterHub's User has more)."""

    def __init__(self, name: str, groups: tuple[str, ...]):
        self.name = name
        self.id = abs(hash(name)) % 10000
        self.admin = False
        self.groups = [SimpleNamespace(name=group) for group in groups]
        self.url = f"/user/{name}/"
        self.base_url = "/"
        self.escaped_name = name
        self.server = Server(base_url=self.url)
        self.spawners: dict = {}


def spawner_for(hub, user: str, profile: str) -> KubeGPUSpawner:
    spawner = KubeGPUSpawner(
        hub=Hub(),
        user=HubUser(user, ("researchers",)),
        api_token=f"token-of-{user}",
        oauth_client_id=f"jupyterhub-user-{user}",
        _mock=True,
        namespace="default",
        service_url=f"{hub.service_url}/services/gpuslice/",
        service_api_token=hub.service_token,
        profiles_dir=str(hub.state_dir / "profiles"),
        start_timeout=60,
    )
    spawner.user_options = {"profile": profile}
    return spawner


def held_leases(hub, user: str) -> list[dict]:
    response = hub.client(hub.service_token).get(hub.api + "leases", params={"user": user}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["leases"]


async def read_pod(name: str) -> dict | None:
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    async with client.ApiClient() as api:
        try:
            pod = await client.CoreV1Api(api).read_namespaced_pod(name, "default")
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return api.sanitize_for_serialization(pod)


async def gone(name: str, timeout: float = 60) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await read_pod(name) is None:
            return True
        await asyncio.sleep(0.3)
    return False


def test_a_gpu_profile_spawns_a_pod_holding_its_lease_through_stop_restart_and_pod_loss(
    gpuslice_service, cluster, monkeypatch
):
    from kubernetes_asyncio.config import kube_config

    monkeypatch.setenv("KUBECONFIG", cluster)
    # KubeSpawner loads the default kubeconfig, whose path kubernetes_asyncio read from
    # $KUBECONFIG when it was first imported: as the hub would have it, this cluster's.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", cluster)
    hub = gpuslice_service

    async def main():
        alice = spawner_for(hub, "alice", "a100-1-8")
        await alice.start()
        pod = await read_pod(alice.pod_name)
        # The real scheduler bound it to the dev pool's node, by the MIG resource of a 1/8 slice.
        assert pod["spec"]["nodeName"] == DEV_NODE
        resources = pod["spec"]["containers"][0]["resources"]
        assert resources["limits"]["nvidia.com/mig-1g.10gb"] == "1"
        assert resources["requests"]["nvidia.com/mig-1g.10gb"] == "1"
        assert pod["metadata"]["labels"]["gpuslice.io/backend"] == "mig"
        env = {item["name"]: item.get("value") for item in pod["spec"]["containers"][0]["env"]}
        assert "CUDA_VISIBLE_DEVICES" not in env, "the device plugin, not a host UUID, picks the device"
        (lease,) = held_leases(hub, "alice")
        assert lease["id"] == alice.lease_id

        # bob shares alice's group quota, which her slice fills: refused with the quota's sentence.
        bob = spawner_for(hub, "bob", "a100-1-8")
        with pytest.raises(SpawnRefused) as refused:
            await bob.start()
        assert refused.value.status_code == 409
        assert "quota" in refused.value.jupyterhub_message.lower()
        assert bob.lease_id == "" and held_leases(hub, "bob") == []

        # The hub restarts: a new spawner from the saved state finds the pod and keeps the lease.
        state = alice.get_state()
        restarted = spawner_for(hub, "alice", "a100-1-8")
        restarted.load_state(state)
        assert restarted.lease_id == lease["id"]
        assert await restarted.poll() is None
        assert [entry["id"] for entry in held_leases(hub, "alice")] == [lease["id"]]

        # Stop deletes the pod and frees the lease: bob can now take the group's slice.
        await restarted.stop()
        assert await gone(state["pod_name"])
        assert held_leases(hub, "alice") == []
        bob = spawner_for(hub, "bob", "a100-1-8")
        await bob.start()
        assert held_leases(hub, "bob")

        # bob's pod disappears behind the hub's back (evicted, node drained): poll gives the slice back.
        from kubernetes_asyncio import client

        async with client.ApiClient() as api:
            await client.CoreV1Api(api).delete_namespaced_pod(bob.pod_name, "default", grace_period_seconds=0)
        assert await gone(bob.pod_name)
        for _ in range(100):
            if await bob.poll() is not None:
                break
            await asyncio.sleep(0.3)
        assert await bob.poll() is not None
        assert held_leases(hub, "bob") == []

    asyncio.run(main())


def test_a_profile_option_chosen_in_the_form_reaches_the_pod_on_the_cluster(
    gpuslice_service, cluster, monkeypatch
):
    from kubernetes_asyncio.config import kube_config

    monkeypatch.setenv("KUBECONFIG", cluster)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", cluster)
    # KubeSpawner's pod reflector is shared by the class and bound to the event loop that started
    # it (a hub has one loop; each test here has its own): this test starts its own.
    monkeypatch.setattr(KubeGPUSpawner, "reflectors", {})
    hub = gpuslice_service

    async def main():
        try:
            await choose(hub)
        finally:
            await KubeGPUSpawner._stop_all_reflectors()

    async def choose(hub):
        carol = spawner_for(hub, "carol", "a100-1-8-images")
        carol.user_options = carol.options_from_form(
            {"profile": ["a100-1-8-images"], "profile-option-a100-1-8-images--image": ["jax"]}
        )
        assert carol.user_options == {"profile": "a100-1-8-images", "image": "jax"}
        await carol.start()
        try:
            pod = await read_pod(carol.pod_name)
            container = pod["spec"]["containers"][0]
            assert container["image"] == "registry.invalid/jax:2"
            env = {item["name"]: item.get("value") for item in container["env"]}
            assert env["XLA_FLAGS"] == "--xla_gpu_strict"
            # The option changed the image; the slice is still the one the lease holds.
            assert container["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "1"
            assert pod["spec"]["nodeName"] == DEV_NODE
            assert [lease["id"] for lease in held_leases(hub, "carol")] == [carol.lease_id]
        finally:
            await carol.stop()
        assert await gone(carol.pod_name)
        assert held_leases(hub, "carol") == []

        # A choice the profile does not offer: 400 with the choices, no pod, no lease.
        dave = spawner_for(hub, "dave", "a100-1-8-images")
        dave.user_options = {"profile": "a100-1-8-images", "image": "tensorflow"}
        with pytest.raises(SpawnRefused) as refused:
            await dave.start()
        assert refused.value.status_code == 400
        assert "choose one of: torch, jax" in refused.value.jupyterhub_message
        assert await read_pod(dave.pod_name) is None and held_leases(hub, "dave") == []

    asyncio.run(main())
