"""The manifests gpuslice creates on Kubernetes, validated against the release the tests build.

Every shipped profile under every slice back-end, and Jobs, validate against the official schema of
Kubernetes 1.37 (``kubernetes-validate``), the release ``build_control_plane.sh`` builds; what each
back-end asks the cluster for is checked as whole values.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from spawner.config.kube_backends import BACKENDS, MIG_PROFILES, PoolBackend, mig_profile_for
from spawner.config.profiles import ProfileConfigError, load_profiles
from spawner.enforce.kube_objects import (
    HomeVolume,
    JobSpec,
    SliceNotRepresentable,
    escape_name,
    job_name,
    label_value,
    make_job,
    make_notebook_pod,
    pod_slice,
)

REPO = Path(__file__).resolve().parents[2]
KUBE_SCHEMA_VERSION = "1.37.0"
"""The schema of the release tests/kube/build_control_plane.sh builds (v1.37.x)."""

SHIPPED = load_profiles(REPO / "profiles")
LEASE = {
    "node": "gpu-a",
    "shares": [
        {
            "gpu_uuid": "GPU-11111111-2222-3333-4444-555555555555",
            "milli_gpu": 125,
            "memory_mib": 10240,
        }
    ],
}


def validate(manifest: dict) -> None:
    kubernetes_validate.validate(manifest, KUBE_SCHEMA_VERSION, strict=True)


def container_limits(pod: dict) -> dict:
    return pod["spec"]["containers"][0]["resources"].get("limits", {})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("slug", [profile.slug for profile in SHIPPED])
def test_every_shipped_profile_on_every_backend_is_a_valid_pod(slug, backend):
    profile = SHIPPED.by_slug[slug]
    pool = PoolBackend(backend=backend)
    if (
        backend == "mig"
        and profile.milli_gpu
        and not all(model in MIG_PROFILES for model in profile.gpu_models)
    ):
        with pytest.raises(SliceNotRepresentable, match="has no MIG profile"):
            make_notebook_pod(profile, pool, user="ada", lease=LEASE)
        return
    pod = make_notebook_pod(profile, pool, user="Ada.Lovelace@lab", server="Big Run", lease=LEASE)
    validate(pod)
    assert pod["metadata"]["name"] == "jupyter--41da-2e-4covelace-40lab---42ig-20-52un"
    assert pod["metadata"]["labels"]["gpuslice.io/profile"] == slug


def test_each_backend_asks_the_cluster_for_the_slice_in_its_own_words():
    eighth = SHIPPED.by_slug["a100-1-8"]
    assert dict(pod_slice(eighth, PoolBackend(backend="mig")).limits) == {"nvidia.com/mig-1g.10gb": "1"}
    assert dict(pod_slice(eighth, PoolBackend(backend="shared")).limits) == {"nvidia.com/gpu.shared": "1"}
    shared = PoolBackend(backend="shared", shared_resource="nvidia.com/gpu-ts", shared_replicas=16)
    assert dict(pod_slice(SHIPPED.by_slug["a100-1-2"], shared).limits) == {"nvidia.com/gpu-ts": "8"}
    assert dict(pod_slice(eighth, PoolBackend(backend="hami")).limits) == {
        "nvidia.com/gpu": "1",
        "nvidia.com/gpumem": "10240",
        "nvidia.com/gpucores": "13",
    }
    kai = pod_slice(eighth, PoolBackend(backend="kai", kai_queue="team-a"))
    assert (dict(kai.annotations), kai.scheduler_name, kai.labels["kai.scheduler/queue"]) == (
        {"gpu-fraction": "0.125"},
        "kai-scheduler",
        "team-a",
    )
    assert dict(pod_slice(eighth, PoolBackend(backend="kai", kai_by_memory=True)).annotations) == {
        "gpu-memory": "10240"
    }
    pinned = pod_slice(eighth, PoolBackend(backend="pinned"), LEASE)
    assert dict(pinned.node_selector) == {"kubernetes.io/hostname": "gpu-a"}
    assert dict(pinned.environment) == {"NVIDIA_VISIBLE_DEVICES": LEASE["shares"][0]["gpu_uuid"]}
    assert dict(pinned.limits) == {}
    with pytest.raises(SliceNotRepresentable, match="needs the lease"):
        pod_slice(eighth, PoolBackend(backend="pinned"))


def test_whole_gpus_are_nvidia_gpu_and_cpu_profiles_get_no_gpu():
    full = SHIPPED.by_slug["a100-full"]
    for backend in ("mig", "shared", "hami", "kai"):
        assert dict(pod_slice(full, PoolBackend(backend=backend)).limits) == {"nvidia.com/gpu": "1"}
    pod = make_notebook_pod(SHIPPED.by_slug["cpu"], PoolBackend(backend="mig"), user="ada")
    assert not any(name.startswith("nvidia.com/") for name in container_limits(pod))


def test_the_pool_places_the_pod_and_the_profile_sizes_it():
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    pool = PoolBackend(backend="mig", node_selector={"gpuslice.io/pool": "dev"}, tolerations=[toleration])
    pod = make_notebook_pod(SHIPPED.by_slug["a100-1-4"], pool, user="ada")
    assert pod["spec"]["nodeSelector"] == {"gpuslice.io/pool": "dev"}
    assert pod["spec"]["tolerations"] == [toleration]
    assert container_limits(pod) == {
        "cpu": 8.0,
        "memory": 32 * 2**30,
        "nvidia.com/mig-2g.20gb": "1",
    }


@pytest.mark.parametrize(
    ("model", "milli", "memory", "expected"),
    [
        ("A100-80GB", 125, None, "1g.10gb"),
        ("A100-80GB", 250, None, "2g.20gb"),
        ("A100-80GB", 500, None, "4g.40gb"),  # 3g is 3/7 < 1/2: never smaller than promised
        ("A100-80GB", 125, 20480, "1g.20gb"),
        ("A100-40GB", 125, None, "1g.5gb"),
        ("A30-24GB", 250, None, "1g.6gb"),
        ("H200", 999, None, "7g.141gb"),
        ("A100-40GB", 125, 50000, None),
        ("T4", 500, None, None),
    ],
)
def test_a_slice_maps_to_the_smallest_mig_profile_that_holds_it(model, milli, memory, expected):
    shape = mig_profile_for(model, milli, memory)
    assert (shape.name if shape else None) == expected


def write_profiles(folder: Path, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "p.yaml").write_text(textwrap.dedent(text).lstrip("\n"))
    return folder


def test_profiles_check_refuses_a_size_no_mig_profile_holds(tmp_path):
    folder = write_profiles(
        tmp_path / "profiles",
        """
        kubernetes:
          pools:
            dev: {backend: mig}
        profiles:
          - slug: ok
            display_name: fits
            milli_gpu: 125
            gpu_models: [A100-80GB]
          - slug: t4
            display_name: no MIG on a T4
            milli_gpu: 500
            gpu_models: [T4]
          - slug: any
            display_name: unnamed card
            milli_gpu: 250
          - slug: train-ok
            display_name: the train pool is not MIG
            milli_gpu: 500
            gpu_models: [T4]
            pool: train
        """,
    )
    with pytest.raises(ProfileConfigError) as raised:
        load_profiles(folder)
    name = str(folder / "p.yaml")
    assert raised.value.errors == [
        f"{name}:11: profiles[1].milli_gpu: T4 has no MIG, so a 500/1000 slice cannot run on a MIG pool; "
        f"use a MIG card ({', '.join(MIG_PROFILES)}) or another back-end for this pool "
        "(kubernetes.pools.dev)",
        f"{name}:15: profiles[2].milli_gpu: a profile on a MIG pool must name its gpu_models, so that its "
        f"slice maps to a MIG profile of that card (MIG cards: {', '.join(MIG_PROFILES)}) "
        "(kubernetes.pools.dev)",
    ]


def test_the_kubernetes_mapping_is_read_and_checked(tmp_path):
    folder = write_profiles(
        tmp_path / "good",
        """
        kubernetes:
          pools:
            dev: {backend: shared, shared_replicas: 4, node_selector: {gpuslice.io/pool: dev}}
        profiles:
          - {slug: quarter, display_name: Quarter, milli_gpu: 250}
        """,
    )
    settings = load_profiles(folder).kubernetes
    assert settings.for_pool("dev") == PoolBackend(
        backend="shared", shared_replicas=4, node_selector={"gpuslice.io/pool": "dev"}
    )
    assert settings.for_pool("train") == PoolBackend()
    assert SHIPPED.kubernetes.for_pool("dev").backend == "pinned"
    bad = write_profiles(
        tmp_path / "bad",
        """
        kubernetes:
          pools:
            dev: {backend: magic}
        profiles:
          - {slug: quarter, display_name: Quarter, milli_gpu: 250}
        """,
    )
    with pytest.raises(ProfileConfigError) as raised:
        load_profiles(bad)
    assert raised.value.errors == [
        f"{bad / 'p.yaml'}:3: kubernetes.pools.dev.backend: expected one of mig, shared, hami, kai, pinned, "
        "got 'magic'"
    ]


def job_spec(**changes) -> JobSpec:
    values = dict(
        job_id="job-0123abcd",
        owner="Ada.Lovelace",
        argv=[
            "python",
            "-m",
            "spawner.service.runner",
            "/srv/gpuslice/jobs/job-0123abcd/cell.json",
        ],
        workdir="/home/jovyan/project",
        environment={"GPUSLICE_JOB_ID": "job-0123abcd"},
        gpus=2,
        time_limit_s=5400.5,
        image="ghcr.io/jupyterhub-gpuslice/trainer:0.1.0",
        grace_seconds=45,
    )
    return JobSpec(**{**values, **changes})


def test_a_job_runs_once_on_the_training_pool_within_its_time_limit():
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    pool = PoolBackend(node_selector={"gpuslice.io/pool": "train"}, tolerations=[toleration])
    job = make_job(job_spec(), pool, HomeVolume())
    validate(job)
    labels = {
        "app.kubernetes.io/managed-by": "gpuslice",
        "app.kubernetes.io/component": "gpuslice-batch-job",
        "gpuslice.io/job-id": "job-2d0123abcd",
        "gpuslice.io/owner": "x-41da-2e-4covelace",
    }
    assert job["metadata"]["name"] == "gpuslice-job-job-2d0123abcd"
    assert job["metadata"]["labels"] == labels
    assert job["metadata"]["annotations"] == {
        "gpuslice.io/job-id": "job-0123abcd",
        "gpuslice.io/owner": "Ada.Lovelace",
    }
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], "suspend" in spec) == (
        0,
        5401,
        False,
    )
    pod = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"] == labels
    assert (pod["restartPolicy"], pod["terminationGracePeriodSeconds"]) == ("Never", 45)
    assert (pod["nodeSelector"], pod["tolerations"]) == (
        {"gpuslice.io/pool": "train"},
        [toleration],
    )
    container = pod["containers"][0]
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "2"}}
    assert container["command"] == ["tini", "-g", "--", *job_spec().argv]
    assert container["workingDir"] == "/home/jovyan/project"
    assert pod["volumes"] == [
        {"name": "home", "persistentVolumeClaim": {"claimName": "claim--41da-2e-4covelace"}}
    ]
    assert container["volumeMounts"] == [{"name": "home", "mountPath": "/home/jovyan"}]
    assert all(volume.keys() != {"name", "configMap"} for volume in pod["volumes"])


def test_kueue_mode_labels_the_job_with_its_local_queue_and_leaves_it_suspended():
    job = make_job(job_spec(local_queue="team-a"), PoolBackend())
    validate(job)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["suspend"] is True


def test_names_and_labels_are_escaped_distinct_and_valid():
    assert escape_name("ada") == "ada"
    assert escape_name("Ada") != escape_name("ada")
    long_names = ["a" * 70 + "1", "a" * 70 + "2", "_" + "b" * 80]
    values = [label_value(name) for name in long_names]
    assert len(set(values)) == 3 and all(len(value) <= 63 for value in values)
    assert all(value[0].isalnum() and value[-1].isalnum() for value in values)
    assert len(job_name("x" * 200)) <= 63


def run_cli(*argv: str, capsys) -> tuple[int, str, str]:
    from spawner.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("backend", BACKENDS)
def test_gpuslice_k8s_render_prints_a_valid_pod(backend, capsys):
    code, out, err = run_cli(
        "k8s",
        "render",
        "--profile",
        "a100-1-8",
        "--user",
        "ada",
        "--backend",
        backend,
        str(REPO / "profiles"),
        capsys=capsys,
    )
    assert (code, err) == (0, "")
    pod = yaml.safe_load(out)
    validate(pod)
    assert out.startswith(f"# profile a100-1-8 ({REPO / 'profiles' / 'default.yaml'}:")
    assert pod["metadata"]["labels"]["gpuslice.io/backend"] == backend


def test_gpuslice_k8s_render_says_why_a_slice_cannot_be_rendered(capsys):
    code, out, err = run_cli(
        "k8s",
        "render",
        "--profile",
        "t4-1-2",
        "--user",
        "ada",
        "--backend",
        "mig",
        str(REPO / "profiles"),
        capsys=capsys,
    )
    assert (code, out) == (1, "")
    assert "'t4-1-2' (500/1000 of T4) has no MIG profile" in err
    code, out, err = run_cli(
        "k8s", "render", "--profile", "nope", "--user", "ada", str(REPO / "profiles"), capsys=capsys
    )
    assert code == 2 and "no profile 'nope'; choose one of: cpu, a100-1-8" in err


def test_gpuslice_k8s_render_job_prints_a_valid_job(capsys):
    code, out, err = run_cli(
        "k8s",
        "render-job",
        "--user",
        "ada",
        "--gpus",
        "4",
        "--time-limit",
        "600",
        "--local-queue",
        "lab",
        "--directory",
        str(REPO / "profiles"),
        capsys=capsys,
    )
    assert (code, err) == (0, "")
    job = yaml.safe_load(out)
    validate(job)
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"] == {
        "limits": {"nvidia.com/gpu": "4"}
    }
    assert (
        job["spec"]["activeDeadlineSeconds"],
        job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"],
    ) == (600, "lab")
