"""Kubernetes manifests gpuslice creates: a notebook pod's slice and a batch job's Job.

Pure functions of their arguments, like KubeSpawner's ``kubespawner/objects.py``: no API calls, so
that ``gpuslice k8s render`` prints exactly what the spawner and the Job executor create, and tests
compare and validate them as whole dictionaries. The spawner (:mod:`spawner.hub.kube`) and the
executor (:mod:`spawner.service.executor.kube`) do the I/O.

A slice is turned into pod settings by its pool's back-end (:mod:`spawner.config.kube_backends`):

=========  =======================================================================================
back-end   what the pod gets
=========  =======================================================================================
mig        ``nvidia.com/mig-<profile>: 1``, the smallest MIG instance of the card holding the slice
shared     ``<shared_resource>: ceil(milli_gpu × replicas / 1000)`` (time-slicing or MPS replicas)
hami       ``nvidia.com/gpu: 1``, ``nvidia.com/gpumem`` (MiB), ``nvidia.com/gpucores`` (percent)
kai        annotation ``gpu-fraction`` (or ``gpu-memory``), ``schedulerName``, the queue label
pinned     the lease's node as node selector and its GPU UUIDs in ``NVIDIA_VISIBLE_DEVICES``
=========  =======================================================================================

Whole GPUs (``gpus: N``) are ``nvidia.com/gpu: N`` under every back-end but ``pinned``.
"""

from __future__ import annotations

import hashlib
import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import escapism

from spawner.config.kube_backends import KAI_QUEUE_LABEL, PoolBackend, mig_profile_for
from spawner.config.profiles import Profile

GPU_RESOURCE = "nvidia.com/gpu"
HAMI_MEMORY_RESOURCE = "nvidia.com/gpumem"
HAMI_MEMORY_PERCENT_RESOURCE = "nvidia.com/gpumem-percentage"
HAMI_CORES_RESOURCE = "nvidia.com/gpucores"
KAI_FRACTION_ANNOTATION = "gpu-fraction"
KAI_MEMORY_ANNOTATION = "gpu-memory"
HOSTNAME_LABEL = "kubernetes.io/hostname"

LABEL_PREFIX = "gpuslice.io/"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "gpuslice"
JOB_COMPONENT = "gpuslice-batch-job"
JOB_ID_LABEL = LABEL_PREFIX + "job-id"
OWNER_LABEL = LABEL_PREFIX + "owner"
PROFILE_LABEL = LABEL_PREFIX + "profile"
LEASE_LABEL = LABEL_PREFIX + "lease"
BACKEND_LABEL = LABEL_PREFIX + "backend"
JOB_ID_ANNOTATION = LABEL_PREFIX + "job-id"
"""The job id unescaped, for people reading the object; the label is the escaped form to select by."""
OWNER_ANNOTATION = LABEL_PREFIX + "owner"

SAFE_CHARS = set(string.ascii_lowercase + string.digits)
_LABEL_VALUE = re.compile(r"^(([a-z0-9][-a-z0-9_.]*)?[a-z0-9])?$")
_LABEL_MAX = 63


def escape_name(text: str) -> str:
    """``'Ada.L'`` -> ``'-41da-2e-4c'``: escaped as KubeSpawner's ``escape`` slug scheme escapes
    user and server names (``kubespawner.slugs.escape_slug``).

    escapism keeps lower-case letters and digits and writes every other character as ``-`` plus its
    hex code, so two distinct names never escape to the same string (a plain lower-casing would
    make ``Ada`` and ``ada`` one pod). Upper-case letters are escaped too, then lowered.
    """
    return escapism.escape(text, safe=SAFE_CHARS, escape_char="-").lower()


def label_value(text: str) -> str:
    """An escaped name that is also a valid label value (at most 63 characters, alphanumeric ends).

    A name escaped to more than 63 characters keeps its start and gets a hash of the whole name, so
    it stays unique; one that starts or ends with an escape gets an ``x`` there.
    """
    value = escape_name(text)
    if len(value) > _LABEL_MAX:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        value = f"{value[: _LABEL_MAX - 10].rstrip('-')}--{digest}"
    if value and not value[0].isalnum():
        value = "x" + value[: _LABEL_MAX - 1]
    if value and not value[-1].isalnum():
        value = value[: _LABEL_MAX - 1] + "x"
    assert _LABEL_VALUE.match(value), value
    return value


@dataclass(frozen=True)
class PodSlice:
    """What a pod needs, beyond its image and command, to hold one slice on one back-end."""

    backend: str
    limits: Mapping[str, str] = field(default_factory=dict)
    """Extended resources; the API server sets their requests equal to these limits."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    scheduler_name: str | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[Mapping[str, Any]] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    mig_profile: str | None = None


class SliceNotRepresentable(ValueError):
    """The profile's slice cannot be expressed on this back-end (e.g. a T4 on a MIG pool)."""


def pod_slice(profile: Profile, pool: PoolBackend, lease: Mapping[str, Any] | None = None) -> PodSlice:
    """The pod settings that hold ``profile``'s slice on ``pool``'s back-end.

    ``lease`` is the grant as the service's REST API returns it (``node``, ``shares`` with
    ``gpu_uuid``, ``milli_gpu`` and ``memory_mib``): ``pinned`` needs it, the others use its
    memory figure when the profile does not fix one.
    """
    backend = pool.backend
    common: dict[str, Any] = {
        "backend": backend,
        "node_selector": dict(pool.node_selector),
        "tolerations": [dict(toleration) for toleration in pool.tolerations],
        "labels": {BACKEND_LABEL: backend},
    }
    if not profile.has_gpu:
        return PodSlice(backend="none")
    if backend == "pinned":
        if lease is None:
            raise SliceNotRepresentable("the pinned back-end needs the lease: its node and GPU UUIDs")
        uuids = ",".join(share["gpu_uuid"] for share in lease["shares"])
        return PodSlice(
            **{**common, "node_selector": {**common["node_selector"], HOSTNAME_LABEL: lease["node"]}},
            environment={"NVIDIA_VISIBLE_DEVICES": uuids},
        )
    if profile.gpus:
        if backend == "kai":
            return PodSlice(
                **{**common, "labels": {**common["labels"], KAI_QUEUE_LABEL: pool.kai_queue}},
                limits={GPU_RESOURCE: str(profile.gpus)},
                scheduler_name=pool.kai_scheduler,
            )
        return PodSlice(**common, limits={GPU_RESOURCE: str(profile.gpus)})
    milli = profile.milli_gpu
    memory_mib = _slice_memory_mib(profile, lease)
    if backend == "mig":
        model = _lease_model(profile, lease)
        shape = mig_profile_for(model, milli, profile.gpu_memory_mib) if model else None
        if shape is None:
            raise SliceNotRepresentable(
                f"profile {profile.slug!r} ({milli}/1000 of {model or 'an unnamed card'}) has no MIG "
                "profile; `gpuslice profiles check` names the fix"
            )
        return PodSlice(**common, limits={shape.resource: "1"}, mig_profile=shape.name)
    if backend == "shared":
        replicas = max(1, math.ceil(milli * pool.shared_replicas / 1000))
        return PodSlice(**common, limits={pool.shared_resource: str(replicas)})
    if backend == "hami":
        limits = {GPU_RESOURCE: "1", HAMI_CORES_RESOURCE: str(math.ceil(milli / 10))}
        if memory_mib is not None:
            limits[HAMI_MEMORY_RESOURCE] = str(memory_mib)
        else:
            limits[HAMI_MEMORY_PERCENT_RESOURCE] = str(math.ceil(milli / 10))
        return PodSlice(**common, limits=limits)
    if backend == "kai":
        if pool.kai_by_memory and memory_mib is not None:
            annotations = {KAI_MEMORY_ANNOTATION: str(memory_mib)}
        else:
            annotations = {KAI_FRACTION_ANNOTATION: _fraction_text(milli)}
        return PodSlice(
            **{**common, "labels": {**common["labels"], KAI_QUEUE_LABEL: pool.kai_queue}},
            annotations=annotations,
            scheduler_name=pool.kai_scheduler,
        )
    raise SliceNotRepresentable(f"unknown back-end {backend!r}")


def _slice_memory_mib(profile: Profile, lease: Mapping[str, Any] | None) -> int | None:
    if profile.gpu_memory_mib is not None:
        return profile.gpu_memory_mib
    if lease and lease.get("shares") and lease["shares"][0].get("memory_mib"):
        return int(lease["shares"][0]["memory_mib"])
    return None


def _lease_model(profile: Profile, lease: Mapping[str, Any] | None) -> str | None:
    """The card the slice landed on when the lease says, else the first model the profile names."""
    if lease and lease.get("model"):
        return str(lease["model"])
    return profile.gpu_models[0] if profile.gpu_models else None


def _fraction_text(milli_gpu: int) -> str:
    """``125`` -> ``'0.125'``: KAI reads the fraction as a decimal string."""
    return f"{milli_gpu / 1000:.3f}".rstrip("0").rstrip(".")


def server_labels(user: str, server: str, profile: str, lease_id: str) -> dict[str, str]:
    """Labels that find a notebook pod again by owner, profile and lease."""
    # A profile slug is DNS-label-like already (the schema checks it), so it is a label as written.
    labels = {OWNER_LABEL: label_value(user), PROFILE_LABEL: profile}
    if lease_id:
        labels[LEASE_LABEL] = label_value(lease_id)
    return labels


def make_notebook_pod(
    profile: Profile,
    pool: PoolBackend,
    *,
    user: str,
    server: str = "",
    lease: Mapping[str, Any] | None = None,
    lease_id: str = "",
    image: str = "quay.io/jupyter/base-notebook:latest",
    namespace: str = "default",
    port: int = 8888,
    cmd: Sequence[str] = ("jupyterhub-singleuser",),
    environment: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The notebook pod KubeGPUSpawner would create for ``user`` with ``profile``, as a dictionary.

    Built by KubeSpawner's own ``make_pod`` with the settings :class:`~spawner.hub.kube.KubeGPUSpawner`
    gives it, so what ``gpuslice k8s render`` prints is what the spawner creates (names from
    KubeSpawner's default ``jupyter-{user}--{server}`` template, escaped the same way).
    """
    from kubespawner.objects import make_pod

    held = pod_slice(profile, pool, lease)
    name = f"jupyter-{escape_name(user)}" + (f"--{escape_name(server)}" if server else "")
    labels = {
        "app": "jupyterhub",
        "component": "singleuser-server",
        "hub.jupyter.org/username": label_value(user),
        "hub.jupyter.org/servername": label_value(server) if server else "",
        **server_labels(user, server, profile.slug, lease_id),
        **held.labels,
    }
    pod = make_pod(
        name=name,
        cmd=list(cmd),
        port=port,
        image=profile.image or image,
        env={**(environment or {}), **profile.environment, **held.environment},
        labels=labels,
        annotations=dict(held.annotations),
        cpu_limit=profile.cpu_limit,
        cpu_guarantee=profile.cpu_guarantee,
        mem_limit=_bytes(profile.mem_limit_mib),
        mem_guarantee=_bytes(profile.mem_guarantee_mib),
        extra_resource_limits=dict(held.limits),
        node_selector=dict(held.node_selector),
        tolerations=list(held.tolerations),
        scheduler_name=held.scheduler_name,
    )
    manifest = to_json(pod)
    manifest["metadata"]["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "Pod", **manifest}


def to_json(value: Any) -> Any:
    """A kubernetes_asyncio model as the JSON the API takes (camelCase keys, unset fields left out).

    What ``ApiClient.sanitize_for_serialization`` does, without an ``ApiClient``, which needs a
    running event loop just to exist.
    """
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if hasattr(value, "openapi_types") and hasattr(value, "attribute_map"):
        return {
            value.attribute_map[attribute]: to_json(getattr(value, attribute))
            for attribute in value.openapi_types
            if getattr(value, attribute) is not None
        }
    return value


def _bytes(mib: int | None) -> int | None:
    return mib * 1024 * 1024 if mib is not None else None


@dataclass(frozen=True)
class HomeVolume:
    """The owner's home, mounted in a job where their notebook has it, so that paths resolve.

    z2jh's default is one PersistentVolumeClaim per user named ``claim-{user}`` mounted at
    ``/home/jovyan``; ``claim_template`` takes ``{user}`` (escaped) the same way.
    """

    claim_template: str = "claim-{user}"
    mount_path: str = "/home/jovyan"

    def claim_for(self, owner: str) -> str:
        return self.claim_template.format(user=escape_name(owner))


@dataclass(frozen=True)
class JobSpec:
    """One batch run as the Job executor builds it (from the service's ExecutionSpec)."""

    job_id: str
    owner: str
    argv: Sequence[str]
    workdir: str
    environment: Mapping[str, str]
    gpus: int
    time_limit_s: float
    image: str
    namespace: str = "default"
    grace_seconds: float = 30.0
    service_account: str | None = None
    extra_volumes: Sequence[Mapping[str, Any]] = ()
    extra_volume_mounts: Sequence[Mapping[str, Any]] = ()
    local_queue: str | None = None
    """Kueue mode: the LocalQueue to label the Job with; Kueue admits it (the Job starts suspended)."""
    init: Sequence[str] = ("tini", "-g", "--")
    """Runs the command as a child, not as PID 1: the kernel drops a signal to PID 1 that has no
    handler, so a plain ``python`` there would never see the SIGTERM of a cancel. tini forwards it
    (the trainer image's entrypoint is tini too); empty runs the command as it is."""


def job_name(job_id: str) -> str:
    """``gpuslice-job-<escaped id>``, within the 63 characters a Job's pods' labels allow."""
    return f"gpuslice-job-{label_value(job_id)}"[:_LABEL_MAX].rstrip("-")


def job_labels(job_id: str, owner: str) -> dict[str, str]:
    """Labels that find a job's Job and pods again, e.g. after a service restart."""
    return {
        MANAGED_BY_LABEL: MANAGED_BY,
        COMPONENT_LABEL: JOB_COMPONENT,
        JOB_ID_LABEL: label_value(job_id),
        OWNER_LABEL: label_value(owner),
    }


def make_job(spec: JobSpec, pool: PoolBackend, home: HomeVolume | None = None) -> dict[str, Any]:
    """The batch/v1 Job of one run: on the training pool, ``nvidia.com/gpu: N``, never retried.

    ``backoffLimit: 0`` because the service, not the Job controller, decides whether a run is tried
    again (a preempted job is requeued; a failed cell is not); ``activeDeadlineSeconds`` is the
    job's time limit, enforced by the Job controller even while the service is down;
    ``terminationGracePeriodSeconds`` is the executor's grace, so a deletion reaches the training
    loop as SIGTERM and it has that long to checkpoint. The payload is not in the Job: the runner
    reads it from the job's files (see :mod:`spawner.service.executor.kube`).
    """
    labels = job_labels(spec.job_id, spec.owner)
    annotations = {JOB_ID_ANNOTATION: spec.job_id, OWNER_ANNOTATION: spec.owner}
    if spec.local_queue:
        labels["kueue.x-k8s.io/queue-name"] = spec.local_queue
    volumes: list[dict[str, Any]] = [dict(volume) for volume in spec.extra_volumes]
    mounts: list[dict[str, Any]] = [dict(mount) for mount in spec.extra_volume_mounts]
    if home is not None:
        volumes.append({"name": "home", "persistentVolumeClaim": {"claimName": home.claim_for(spec.owner)}})
        mounts.append({"name": "home", "mountPath": home.mount_path})
    resources = {"limits": {GPU_RESOURCE: str(spec.gpus)}} if spec.gpus else {}
    container: dict[str, Any] = {
        "name": "job",
        "image": spec.image,
        "command": [*spec.init, *spec.argv],
        "workingDir": spec.workdir,
        "env": [{"name": name, "value": value} for name, value in sorted(spec.environment.items())],
        "resources": resources,
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": max(0, math.ceil(spec.grace_seconds)),
        "containers": [container],
        "volumes": volumes,
        "nodeSelector": dict(pool.node_selector),
        "tolerations": [dict(toleration) for toleration in pool.tolerations],
    }
    if spec.service_account:
        pod_spec["serviceAccountName"] = spec.service_account
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "activeDeadlineSeconds": max(1, math.ceil(spec.time_limit_s)),
        "template": {
            "metadata": {"labels": dict(labels), "annotations": dict(annotations)},
            "spec": pod_spec,
        },
    }
    if spec.local_queue:
        job_spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(spec.job_id),
            "namespace": spec.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": job_spec,
    }
