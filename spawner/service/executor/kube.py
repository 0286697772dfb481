"""The Kubernetes Job executor: one batch/v1 Job per run, on the training node pool.

The service still decides what runs and when (queue, quotas, placement); this executor only makes
a run a Job and reports how it went, with everything it needs to know kept in the cluster, so that
a restarted service finds every run again by its labels:

- start: ``make_job`` (:mod:`spawner.enforce.kube_objects`): ``nvidia.com/gpu: N``, the pool's node
  selector and tolerations, ``backoffLimit: 0`` (the service decides about reruns),
  ``activeDeadlineSeconds`` (the time limit, kept by the Job controller even while the service is
  down), the owner's home volume where their notebook has it, and the job's files volume where the
  service writes the payload. A run already created (a retried start) is left as it is.
- stop (cancel, preemption, time limit): the Job is marked stopped and suspended, so the Job
  controller starts no pod for it again, and its pods are deleted with the grace period: the
  kubelet sends SIGTERM, waits, then SIGKILL, so a training loop has that long to checkpoint.
  Once its pods are gone and its end is kept (below) the executor deletes it: suspended, it never
  finishes, so no TTL would.
- status: from the Job's conditions and its pod's container state; a Job whose pod vanished
  without an exit code (its node deleted) is ``lost``. ``run_ends`` reports the runs whose Job
  ended, from a watch, so the service's scheduler polls a run when it ends rather than every run
  at every pass (``follow`` streams every Job's status the same way).
- ends kept: when ``status`` first finds a run ended, it copies the log to ``logs_dir``, writes the
  end beside it, and only then gives a finished Job its ``ttlSecondsAfterFinished``
  (``ttl_seconds_after_finished``), so finished Jobs do not pile up and a Job the TTL controller
  removed still reads as ended after a service restart, never as lost.
- logs: read from the API while the pod exists and copied to ``logs_dir``, so they outlive it.
- payload (with ``payload_service_url``): a cell job's runner fetches its signed payload from the
  service (``GET api/v1/jobs/{id}/payload``) with a token scoped to that job and run
  (:func:`payload_token`), into a volume of the pod's own, rather than reading it from the job
  files volume; ``python -m spawner.service.executor.kube fetch-payload`` does it in the pod.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from traitlets import Bool, Float, Int, List, Unicode, default

from spawner.config.kube_backends import PoolBackend
from spawner.config.profiles import load_profiles
from spawner.core.vocabulary import TRAIN_POOL
from spawner.enforce.kube_objects import (
    JOB_ID_ANNOTATION,
    JOB_ID_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    HomeVolume,
    JobSpec,
    job_name,
    label_value,
    make_job,
)
from spawner.inventory.kube import kube_api_client, node_of_kube_uuid

from ..payload import KEY_VARIABLE, PAYLOAD_FILE
from .base import (
    ExecutionSpec,
    ExecutionState,
    ExecutionStatus,
    Executor,
    UnknownJob,
    execution_environment,
)

PAYLOAD_URL_VARIABLE = "GPUSLICE_PAYLOAD_URL"
PAYLOAD_TOKEN_VARIABLE = "GPUSLICE_PAYLOAD_TOKEN"
PAYLOAD_MOUNT_PATH = "/var/run/gpuslice/payload"
"""Where a fetched payload is written in the pod: an emptyDir, the pod's own (the runner writes
the cell's local modules beside it)."""
EXIT_NO_PAYLOAD = 3
"""The runner's exit code for a payload it cannot use (spawner.service.runner.EXIT_BAD_PAYLOAD)."""
STOPPED_ANNOTATION = "gpuslice.io/stopped"
"""Set on a Job before its pods are deleted: the run ended because it was asked to, not by itself."""
SIGTERM_EXIT = -15
"""How :class:`ExecutionStatus` writes an end by SIGTERM when no container exit code was recorded."""


class KubeJobExecutor(Executor):
    """Runs each batch job as a Kubernetes Job in ``namespace``."""

    namespace = Unicode(
        help="The namespace of the Jobs (default: the service's own pod's namespace, else 'default')."
    ).tag(config=True)

    @default("namespace")
    def _default_namespace(self) -> str:
        path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        return path.read_text().strip() if path.exists() else os.environ.get("POD_NAMESPACE", "default")

    image = Unicode(
        "ghcr.io/jupyterhub-gpuslice/trainer:0.1.0",
        help="The image Jobs run in (images/trainer/Dockerfile): gpuslice's runner and the job's Python.",
    ).tag(config=True)

    kubeconfig = Unicode(
        "",
        help="""A kubeconfig file to reach the cluster; empty: the in-cluster service account
        when running in a pod, else $KUBECONFIG or ~/.kube/config.""",
    ).tag(config=True)

    profiles_dir = Unicode(
        "profiles",
        help="""The profiles directory, for the training pool's node selector and tolerations
        (`kubernetes: pools: train:` in the profiles).""",
    ).tag(config=True)

    logs_dir = Unicode(
        "var/kube-job-logs",
        help="Where the logs read from the API are kept, so that they outlive the Job's pod.",
    ).tag(config=True)

    mount_home = Bool(
        True,
        help="Mount the owner's home volume (z2jh's claim-{user}) where their notebook has it.",
    ).tag(config=True)

    home_claim_template = Unicode(
        "claim-{user}",
        help="The PersistentVolumeClaim of a user's home; {user} is the escaped user name.",
    ).tag(config=True)

    home_mount_path = Unicode("/home/jovyan", help="Where the notebook mounts the home volume.").tag(
        config=True
    )

    job_files_claim = Unicode(
        "",
        help="""The PersistentVolumeClaim holding the service's job files (its scripts_dir), mounted
        in each Job at `job_files_mount_path`, so that the runner reads the signed payload the
        service wrote: never a ConfigMap (1 MiB at most). Empty: no such volume (the job files
        must then be on the home volume).""",
    ).tag(config=True)

    job_files_mount_path = Unicode(
        "/srv/gpuslice/jobs",
        help="Where the job files volume is mounted: the same path as the service's scripts_dir.",
    ).tag(config=True)

    payload_service_url = Unicode(
        "",
        help="""The service's URL as Jobs' pods reach it (e.g. http://hub:10101/services/gpuslice/).
        Set: a cell job's runner fetches its signed payload from GET api/v1/jobs/{id}/payload with
        a token that opens that job's payload for that run only (never a hub token), into a volume
        of its own pod; the job files volume then holds only results and checkpoints. Empty: the
        runner reads the payload from the job files volume.""",
    ).tag(config=True)

    local_queue = Unicode(
        "",
        help="""Kueue mode: the LocalQueue Jobs are labelled with. Each Job is created suspended
        and the cluster's Kueue admits it; empty: Jobs start at once.""",
    ).tag(config=True)

    service_account = Unicode(
        "", help="The service account of Jobs' pods (empty: the namespace's default)."
    ).tag(config=True)

    init_command = List(
        Unicode(),
        default_value=["tini", "-g", "--"],
        help="""What runs the job's command as its child, so that SIGTERM reaches it (the kernel drops
        a signal to a PID 1 without a handler). The trainer image has tini; [] runs the command as
        the container's PID 1.""",
    ).tag(config=True)

    deleted_node_grace_seconds = Float(
        5.0,
        help="""How long (seconds) a run whose node was deleted still counts as running before
        `status` says it is lost. The service's node watch (Inventory source "kubernetes") fails such
        a run at once, saying which node went; this leaves it the time to, so that the job's reason
        names the node, while a service without that watch still learns of the loss.""",
    ).tag(config=True)

    ttl_seconds_after_finished = Int(
        3600,
        allow_none=True,
        min=0,
        help="""Seconds a finished Job (and its pod) stays in the cluster once the service has
        read how it ended, as its `ttlSecondsAfterFinished`: without it finished Jobs and their
        pods pile up in the namespace. It is set only after the service copied the log to
        `logs_dir` and wrote down the end beside it, so a Job the TTL controller removed still
        reads as ended (not lost) after a service restart. A stopped (cancelled, preempted) Job is
        suspended and never finishes, so the executor deletes it itself at that point. None:
        Jobs are kept until someone deletes them.""",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._deleted_nodes: dict[str, float] = {}  # node name -> when first found deleted (monotonic)
        self._api_client: Any = None
        self._api_lock = asyncio.Lock()

    # -- the API ------------------------------------------------------------------------------

    async def api_client(self) -> Any:
        """One API client for the executor's life, configured on first use."""
        async with self._api_lock:
            if self._api_client is None:
                self._api_client = await kube_api_client(self.kubeconfig)
            return self._api_client

    async def close(self) -> None:
        if self._api_client is not None:
            await self._api_client.close()
            self._api_client = None

    async def _batch(self) -> Any:
        from kubernetes_asyncio import client

        return client.BatchV1Api(await self.api_client())

    async def _core(self) -> Any:
        from kubernetes_asyncio import client

        return client.CoreV1Api(await self.api_client())

    # -- building ----------------------------------------------------------------------------

    def train_pool(self) -> PoolBackend:
        return load_profiles(self.profiles_dir).kubernetes.for_pool(TRAIN_POOL)

    def job_manifest(self, spec: ExecutionSpec) -> dict[str, Any]:
        """The Job of ``spec`` (blocking: reads the profiles), as :meth:`start` creates it."""
        volumes, mounts = [], []
        if self.job_files_claim:
            volumes.append(
                {"name": "job-files", "persistentVolumeClaim": {"claimName": self.job_files_claim}}
            )
            mounts.append({"name": "job-files", "mountPath": self.job_files_mount_path})
        environment = execution_environment(spec)
        # The device plugin gives the container its GPUs, numbered from 0: host UUIDs would hide them.
        environment.pop("CUDA_VISIBLE_DEVICES", None)
        argv = list(spec.argv)
        if self.payload_service_url and KEY_VARIABLE in environment and argv[-1].endswith(PAYLOAD_FILE):
            # The runner's payload, fetched with the run's token into the pod's own volume first.
            fetched = f"{PAYLOAD_MOUNT_PATH}/{PAYLOAD_FILE}"
            service = self.payload_service_url.rstrip("/")
            environment[PAYLOAD_URL_VARIABLE] = f"{service}/api/v1/jobs/{job_of_run(spec.job_id)}/payload"
            environment[PAYLOAD_TOKEN_VARIABLE] = payload_token(
                bytes.fromhex(environment[KEY_VARIABLE]), spec.job_id
            )
            argv = [argv[0], "-m", __name__, "fetch-payload", fetched, "--", *argv[:-1], fetched]
            volumes.append({"name": "payload", "emptyDir": {}})
            mounts.append({"name": "payload", "mountPath": PAYLOAD_MOUNT_PATH})
        job_spec = JobSpec(
            job_id=spec.job_id,
            owner=spec.owner,
            argv=argv,
            workdir=spec.workdir,
            environment=environment,
            gpus=len(spec.gpu_uuids),
            time_limit_s=spec.time_limit_s,
            image=self.image,
            namespace=self.namespace,
            grace_seconds=self.grace_seconds,
            service_account=self.service_account or None,
            extra_volumes=volumes,
            extra_volume_mounts=mounts,
            local_queue=self.local_queue or None,
            init=tuple(self.init_command),
        )
        home = HomeVolume(self.home_claim_template, self.home_mount_path) if self.mount_home else None
        manifest = make_job(job_spec, self.train_pool(), home)
        node = placed_node(spec.gpu_uuids)
        if node is not None:
            # The node the allocator chose, so that the ledger's placement (which the service
            # fails and frees when that node is deleted) is where the pod really runs.
            manifest["spec"]["template"]["spec"]["affinity"] = node_affinity(node)
        return manifest

    # -- the interface -------------------------------------------------------------------------

    async def start(self, spec: ExecutionSpec) -> ExecutionStatus:
        from kubernetes_asyncio.client.exceptions import ApiException

        manifest = await asyncio.to_thread(self.job_manifest, spec)
        # The log file is also the record that this executor started the run: a Job missing later
        # is then "lost" (deleted behind the service's back), not "unknown".
        await asyncio.to_thread(_write, self.log_path(spec.job_id), b"")
        self.end_path(spec.job_id).unlink(missing_ok=True)  # a run started again under its id
        batch = await self._batch()
        for _attempt in range(2):
            try:
                await batch.create_namespaced_job(self.namespace, manifest)
                break
            except ApiException as error:
                if error.status != 409:
                    raise
            existing = await self._read_job(spec.job_id)
            if existing is None or not job_status(existing, []).stopped:
                # Already created and not stopped: a start retried after a lost answer is the same run.
                self.log.info("gpuslice: the Job of job %s exists already", spec.job_id)
                break
            # A run stopped earlier under the same id (a preempted run started again): replace it.
            await self.forget(spec.job_id)
            await self._wait_gone(spec.job_id)
        return ExecutionStatus(ExecutionState.running, None, None, False, False)

    async def _wait_gone(self, job_id: str, timeout_s: float = 60) -> None:
        """Until the Job is deleted (foreground deletion waits for its pods), at most ``timeout_s``."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            if await self._read_job(job_id) is None:
                return
            await asyncio.sleep(0.2)

    async def _read_job(self, job_id: str) -> dict[str, Any] | None:
        response = await (await self._batch()).read_namespaced_job(
            job_name(job_id), self.namespace, _preload_content=False
        )
        return await _json_or_none(response)

    async def _pods(self, job_id: str) -> list[dict[str, Any]]:
        response = await (await self._core()).list_namespaced_pod(
            self.namespace, label_selector=f"{JOB_ID_LABEL}={label_value(job_id)}", _preload_content=False
        )
        return ((await _json_or_none(response)) or {}).get("items", [])

    async def status(self, job_id: str) -> ExecutionStatus:
        job = await self._read_job(job_id)
        if job is None:
            ended = await asyncio.to_thread(_read_end, self.end_path(job_id))
            if ended is not None:
                return ended  # removed after its end was kept (ttl_seconds_after_finished)
            if self.log_path(job_id).exists():
                return ExecutionStatus(ExecutionState.lost, None, None, False, False)
            raise UnknownJob(job_id)
        pods = await self._pods(job_id)
        status = job_status(job, pods)
        if status.state is ExecutionState.running and await self._on_deleted_node(pods):
            # The pod's node is gone: nothing runs it any more, though until the pod garbage
            # collector removes the pod (tens of seconds) the Job still counts it as active.
            return ExecutionStatus(ExecutionState.lost, None, None, False, status.stopped)
        if status.state is not ExecutionState.running and not self.end_path(job_id).exists():
            await self._keep_end(job_id, job, pods, status)
        return status

    def end_path(self, job_id: str) -> Path:
        """Where how a run ended is written once its log is copied: the Job may then be removed."""
        return Path(self.logs_dir) / f"{label_value(job_id)}.end.json"

    async def _keep_end(
        self, job_id: str, job: dict[str, Any], pods: list[dict[str, Any]], status: ExecutionStatus
    ) -> None:
        """Copy the ended run's log and write down its end, then let the cluster remove its Job:
        a finished one by the TTL controller after ``ttl_seconds_after_finished``, a stopped
        (suspended, so never finished) one at once, once its pods are gone."""
        if (job.get("status") or {}).get("active") or any(
            (pod.get("status") or {}).get("phase") in ("Pending", "Running") for pod in pods
        ):
            return  # a stopped run's pod still in its grace period: its log is not complete yet
        await self._save_log(job_id)
        await asyncio.to_thread(_write_end, self.end_path(job_id), status)
        if self.ttl_seconds_after_finished is None:
            return
        if job_status(job, []).stopped and not _finished(job):
            await self.forget(job_id)
        elif (job.get("spec") or {}).get("ttlSecondsAfterFinished") is None:
            patch = {"spec": {"ttlSecondsAfterFinished": self.ttl_seconds_after_finished}}
            await (await self._batch()).patch_namespaced_job(job_name(job_id), self.namespace, patch)

    async def _on_deleted_node(self, pods: list[dict[str, Any]]) -> bool:
        core = await self._core()
        for pod in pods:
            node = (pod.get("spec") or {}).get("nodeName")
            if not node or (pod.get("status") or {}).get("phase") not in ("Pending", "Running"):
                continue
            if await _json_or_none(await core.read_node(node, _preload_content=False)) is None:
                now = asyncio.get_running_loop().time()
                first_seen = self._deleted_nodes.setdefault(node, now)
                if now - first_seen >= self.deleted_node_grace_seconds:
                    self.log.warning("gpuslice: node %s of pod %s was deleted", node, pod["metadata"]["name"])
                    return True
        return False

    async def request_stop(self, job_id: str, grace_s: float | None = None) -> bool:
        job = await self._read_job(job_id)
        if job is None or job_status(job, []).state is not ExecutionState.running:
            return False
        if job.get("metadata", {}).get("annotations", {}).get(STOPPED_ANNOTATION):
            return False
        grace = self.grace_seconds if grace_s is None else grace_s
        await self._save_log(job_id)
        patch = {"metadata": {"annotations": {STOPPED_ANNOTATION: "true"}}, "spec": {"suspend": True}}
        await (await self._batch()).patch_namespaced_job(job_name(job_id), self.namespace, patch)
        core = await self._core()
        for pod in await self._pods(job_id):
            await _delete_pod(core, pod["metadata"]["name"], self.namespace, grace)
        return True

    async def stop(self, job_id: str, grace_s: float | None = None) -> ExecutionStatus:
        grace = self.grace_seconds if grace_s is None else grace_s
        await self.request_stop(job_id, grace)
        # The kubelet owns the SIGKILL after the grace; wait for the pods to be gone, a little longer.
        deadline = asyncio.get_running_loop().time() + grace + 30
        while asyncio.get_running_loop().time() < deadline:
            status = await self.status(job_id)
            if status.state is not ExecutionState.running and not await self._pods(job_id):
                return status
            await asyncio.sleep(0.5)
        return await self.status(job_id)

    async def follow(self, timeout_seconds: int = 300) -> AsyncIterator[tuple[str, ExecutionStatus]]:
        """Every change of every gpuslice Job in the namespace, as ``(job id, status)``, until cancelled."""
        async for job in self._watch_jobs(timeout_seconds):
            yield await self._followed(job)

    def run_ends(self) -> AsyncIterator[str]:
        """The runs whose Job the Job controller marked finished (or whose stop emptied it), from
        the watch of :meth:`_watch_jobs`: the scheduler polls them as they end (a Job that ended
        while the service was down is listed first), not every Job at every pass."""
        return self._ended_runs()

    async def _ended_runs(self) -> AsyncIterator[str]:
        async for job in self._watch_jobs():
            # The Job's own status is enough to know it ended; status() reads the exit code.
            if job_status(job, []).state is not ExecutionState.running:
                yield _run_of(job)

    async def _watch_jobs(self, timeout_seconds: int = 300) -> AsyncIterator[dict[str, Any]]:
        """Every gpuslice Job in the namespace as it changes (deletions left out), until cancelled.

        A watch on the Jobs this executor labels, so the service can react when a run ends
        instead of asking about each one; it lists first (so a restarted service sees every Job
        once) and resumes from the last version seen, listing again when that is too old (410).
        """
        from kubernetes_asyncio import watch
        from kubernetes_asyncio.client.exceptions import ApiException

        batch = await self._batch()
        selector = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
        version = ""
        while True:
            if not version:
                response = await batch.list_namespaced_job(
                    self.namespace, label_selector=selector, _preload_content=False
                )
                listed = await _json_or_none(response) or {}
                version = listed.get("metadata", {}).get("resourceVersion", "")
                for job in listed.get("items", []):
                    yield job
            stream = watch.Watch()
            try:
                async for event in stream.stream(
                    batch.list_namespaced_job,
                    self.namespace,
                    label_selector=selector,
                    resource_version=version,
                    timeout_seconds=timeout_seconds,
                ):
                    job = event["raw_object"]
                    if event["type"] == "ERROR":
                        raise ApiException(status=job.get("code", 500), reason=job.get("message", ""))
                    version = job["metadata"].get("resourceVersion", version)
                    if event["type"] != "DELETED":
                        yield job
            except ApiException as error:
                if error.status != 410:
                    raise
                version = ""
            finally:
                stream.stop()

    async def _followed(self, job: dict[str, Any]) -> tuple[str, ExecutionStatus]:
        job_id = _run_of(job)
        return job_id, await self.status(job_id)

    async def forget(self, job_id: str) -> None:
        """Delete the Job and its pods once the service has recorded how it ended."""
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            await (await self._batch()).delete_namespaced_job(
                job_name(job_id), self.namespace, propagation_policy="Foreground"
            )
        except ApiException as error:
            if error.status != 404:
                raise

    def log_path(self, job_id: str) -> Path:
        return Path(self.logs_dir) / f"{label_value(job_id)}.log"

    async def _save_log(self, job_id: str) -> None:
        """Copy the pod's log from the API to :meth:`log_path` (a pod without a log leaves it as is)."""
        from kubernetes_asyncio.client.exceptions import ApiException

        core = await self._core()
        for pod in await self._pods(job_id):
            try:
                text = await core.read_namespaced_pod_log(pod["metadata"]["name"], self.namespace)
            except ApiException as error:
                self.log.debug("gpuslice: no log for job %s yet: %s", job_id, error.reason)
                continue
            await asyncio.to_thread(_write, self.log_path(job_id), text.encode())

    async def read_log(self, job_id: str, offset: int = 0, limit: int = 65536) -> tuple[bytes, int]:
        await self._save_log(job_id)
        path = self.log_path(job_id)
        if not path.exists():
            return b"", offset
        return await asyncio.to_thread(_read, path, offset, limit)


def payload_token(job_key: bytes, run: str) -> str:
    """The token that lets run ``run`` of a job fetch the job's payload: an HMAC of the run's id
    under the job's key (itself an HMAC of the job's id under the service's master key). It opens
    that one job's payload, for that run only, and the service keeps no list of tokens: it
    derives the token again when asked."""
    return hmac.new(job_key, b"gpuslice-payload-token\0" + run.encode(), hashlib.sha256).hexdigest()


def job_of_run(run: str) -> str:
    """The job id of a run id, which ``spawner.service.runs.run_id`` writes ``<job id>-<attempt>``."""
    return run.rpartition("-")[0]


def fetch_payload(url: str, token: str, path: Path) -> None:
    """GET the payload at ``url`` with the run's ``token`` and write it to ``path``; OSError
    (urllib's HTTPError among them, with the service's message) when it cannot."""
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = response.read()
    except urllib.error.HTTPError as error:
        raise OSError(f"{error.code} {error.read().decode(errors='replace')[:500]}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)


def main(arguments: list[str] | None = None) -> int:
    """``fetch-payload PATH -- COMMAND...``, in a Job's pod: fetch the payload to PATH (the URL and
    token from the environment, then taken out of it, so the cell never sees them), then become
    COMMAND (the runner)."""
    arguments = sys.argv[1:] if arguments is None else arguments
    if len(arguments) < 4 or arguments[0] != "fetch-payload" or arguments[2] != "--":
        print(
            "usage: python -m spawner.service.executor.kube fetch-payload PATH -- COMMAND...", file=sys.stderr
        )
        return 2
    url = os.environ.pop(PAYLOAD_URL_VARIABLE, "")
    token = os.environ.pop(PAYLOAD_TOKEN_VARIABLE, "")
    try:
        fetch_payload(url, token, Path(arguments[1]))
    except (OSError, ValueError) as error:
        print(
            f"[gpuslice] refusing to run: the payload could not be fetched from {url!r}: {error}",
            file=sys.stderr,
        )
        return EXIT_NO_PAYLOAD
    os.execvp(arguments[3], arguments[3:])
    return 0  # not reached: execvp replaces this process


def placed_node(gpu_uuids: list[str]) -> str | None:
    """The one node whose GPUs (inventory source "kubernetes") a run was given; None when they
    are not a cluster's (or there are none: a CPU job goes wherever the scheduler puts it)."""
    nodes = {node_of_kube_uuid(uuid) for uuid in gpu_uuids}
    return nodes.pop() if len(nodes) == 1 and None not in nodes else None


def node_affinity(node: str) -> dict[str, Any]:
    """A required affinity to the node named ``node`` (by its object name, as DaemonSets pin
    their pods: the hostname label may differ from the name)."""
    term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


def job_status(job: dict[str, Any], pods: list[dict[str, Any]]) -> ExecutionStatus:
    """How a Job stands, from its conditions and its pod's container state (pure, for tests too)."""
    metadata = job.get("metadata", {})
    stopped = bool((metadata.get("annotations") or {}).get(STOPPED_ANNOTATION))
    status = job.get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
    exit_code = _exit_code(pods)
    if "Complete" in conditions or "SuccessCriteriaMet" in conditions:
        return ExecutionStatus(
            ExecutionState.exited, 0 if exit_code is None else exit_code, None, False, stopped
        )
    if "Failed" in conditions or "FailureTarget" in conditions:
        failed = conditions.get("Failed") or conditions["FailureTarget"]
        timed_out = failed.get("reason") == "DeadlineExceeded"
        if exit_code is None and not timed_out and not stopped:
            # The pod vanished without an exit code: its node was deleted, or it was evicted.
            return ExecutionStatus(ExecutionState.lost, None, None, False, False)
        return ExecutionStatus(
            ExecutionState.exited, SIGTERM_EXIT if exit_code is None else exit_code, None, timed_out, stopped
        )
    if stopped and not status.get("active"):
        return ExecutionStatus(
            ExecutionState.exited, SIGTERM_EXIT if exit_code is None else exit_code, None, False, True
        )
    return ExecutionStatus(ExecutionState.running, None, None, False, stopped)


def _run_of(job: dict[str, Any]) -> str:
    """The run id a Job was created for (its annotation: the name is escaped)."""
    return job["metadata"].get("annotations", {}).get(JOB_ID_ANNOTATION, job["metadata"]["name"])


async def _json_or_none(response: Any) -> dict[str, Any] | None:
    """The JSON of an unparsed API response; None for 404. Without content preloading the client
    raises on no status, so every other failure is raised here, with the API's own message."""
    from kubernetes_asyncio.client.exceptions import ApiException

    body = await response.read()
    if response.status == 404:
        return None
    if response.status >= 400:
        raise ApiException(status=response.status, reason=body.decode(errors="replace")[:500])
    return json.loads(body)


def _exit_code(pods: list[dict[str, Any]]) -> int | None:
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if terminated and terminated.get("exitCode") is not None:
                code = int(terminated["exitCode"])
                # A shell's 128+N is death by signal N, which ExecutionStatus writes as -N.
                return -(code - 128) if 128 < code < 160 else code
    return None


async def _delete_pod(core: Any, name: str, namespace: str, grace_s: float) -> None:
    from kubernetes_asyncio.client.exceptions import ApiException

    try:
        await core.delete_namespaced_pod(name, namespace, grace_period_seconds=max(0, int(grace_s)))
    except ApiException as error:
        if error.status != 404:
            raise


def _finished(job: dict[str, Any]) -> bool:
    """Whether the Job controller marked the Job finished (what its TTL counts from)."""
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions)


def _write_end(path: Path, status: ExecutionStatus) -> None:
    record = {
        "state": status.state.value,
        "exit_code": status.exit_code,
        "timed_out": status.timed_out,
        "stopped": status.stopped,
    }
    _write(path, json.dumps(record).encode())


def _read_end(path: Path) -> ExecutionStatus | None:
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    return ExecutionStatus(
        ExecutionState(record["state"]), record["exit_code"], None, record["timed_out"], record["stopped"]
    )


def _write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_bytes(content)
    partial.replace(path)


def _read(path: Path, offset: int, limit: int) -> tuple[bytes, int]:
    with path.open("rb") as log_file:
        log_file.seek(offset)
        chunk = log_file.read(limit)
    return chunk, offset + len(chunk)


if __name__ == "__main__":
    sys.exit(main())
