"""Kueue mode on the real control plane: Kueue's own controller admits gpuslice's suspended Job.

``KubeJobExecutor.local_queue`` labels each Job with ``kueue.x-k8s.io/queue-name`` and creates it
suspended; a cluster's Kueue then admits it into a ClusterQueue with quota and unsuspends it. Here
that Kueue is the real controller, built from the ``sigs.k8s.io/kueue`` Go module by
``build_control_plane.sh`` (with its CRDs), started against the test control plane with only the
``batch/job`` integration. Its webhooks are not registered with the API server (they would need a
Service in front of them), so nothing calls them; the Job is suspended by gpuslice itself, which
is what Kueue's Job webhook would otherwise do.

Without its internal certificate management (which needs those webhook objects) Kueue reads its
metrics certificate from a fixed path, /etc/kueue/metrics/certs, even with metrics off. The test
never writes to /etc: Kueue runs in a mount namespace of its own (``unshare``) whose /etc is an
overlay with a temporary upper directory, and the test is skipped, saying so, where that is not
permitted.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml
from harness import free_port

from .conftest import TRAIN_NODES
from .control_plane import CACHE
from .test_control_plane import api, end_process, ended, eventually, executor, running_pod, spec

pytestmark = pytest.mark.slow
KUEUE_VERSION = "v0.17.0"
KUEUE_DIR = CACHE / f"kueue-{KUEUE_VERSION}"
KUEUE = KUEUE_DIR / "bin" / "kueue"
CRDS = KUEUE_DIR / "crd"
LOCAL_QUEUE = "gpuslice-lab"
METRICS_CERTS = "/etc/kueue/metrics/certs"
"""Where Kueue v0.17 reads its metrics certificate when it does not manage certificates itself."""
START_TIMEOUT_S = 120


def _missing() -> str | None:
    if os.environ.get("KUBECONFIG"):
        return "the Kueue test installs Kueue's CRDs and runs its controller: only on the test control plane"
    if not KUEUE.is_file() or not any(CRDS.glob("*.yaml")):
        return (
            f"Kueue {KUEUE_VERSION} is not built in {KUEUE_DIR} (tests/kube/build_control_plane.sh builds it "
            "when go is there)"
        )
    if not shutil.which("unshare"):
        return "unshare (util-linux) is not on PATH: Kueue's fixed /etc/kueue path cannot be given to it"
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"no mount namespace for Kueue's fixed /etc/kueue path here: {probe.stderr.strip()}"
    return None


def _in_own_etc(workdir: Path, argv: list[str]) -> list[str]:
    """``argv`` run in a mount namespace whose /etc is an overlay (writes go to ``workdir``),
    with the webhook certificate also where Kueue reads its metrics certificate."""
    upper, work = workdir / "etc-upper", workdir / "etc-work"
    upper.mkdir()
    work.mkdir()
    script = " && ".join(
        [
            f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc",
            f"mkdir -p {METRICS_CERTS}",
            f"cp {workdir / 'certs'}/tls.crt {workdir / 'certs'}/tls.key {METRICS_CERTS}/",
            "exec " + shlex.join(argv),
        ]
    )
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script]


def _serving_certificate(directory: Path) -> None:
    """A self-signed certificate for Kueue's webhook server, which will not start without one."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kueue-webhook")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


async def _install(kubeconfig: str) -> None:
    """Kueue's CRDs, its namespace, and a ClusterQueue with GPU quota behind our LocalQueue."""
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    async with await api(kubeconfig) as api_client:
        extensions = client.ApiextensionsV1Api(api_client)
        for path in sorted(CRDS.glob("*.yaml")):
            try:
                await extensions.create_custom_resource_definition(yaml.safe_load(path.read_text()))
            except ApiException as error:
                if error.status != 409:
                    raise
        names = [yaml.safe_load(path.read_text())["metadata"]["name"] for path in CRDS.glob("*.yaml")]

        async def established():
            for crd_name in names:
                crd = await extensions.read_custom_resource_definition(crd_name)
                conditions = {c.type: c.status for c in crd.status.conditions or []}
                if conditions.get("Established") != "True":
                    return False
            return True

        await eventually("Kueue's CRDs established", established)
        try:
            await client.CoreV1Api(api_client).create_namespace({"metadata": {"name": "kueue-system"}})
        except ApiException as error:
            if error.status != 409:
                raise
        custom = client.CustomObjectsApi(api_client)
        group, version = "kueue.x-k8s.io", "v1beta2"
        objects = [
            (
                "resourceflavors",
                None,
                {"kind": "ResourceFlavor", "metadata": {"name": "gpuslice-a100"}, "spec": {}},
            ),
            (
                "clusterqueues",
                None,
                {
                    "kind": "ClusterQueue",
                    "metadata": {"name": "gpuslice-train"},
                    "spec": {
                        "namespaceSelector": {},
                        "resourceGroups": [
                            {
                                "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                                "flavors": [
                                    {
                                        "name": "gpuslice-a100",
                                        "resources": [
                                            {"name": "cpu", "nominalQuota": "64"},
                                            {"name": "memory", "nominalQuota": "512Gi"},
                                            {"name": "nvidia.com/gpu", "nominalQuota": "8"},
                                        ],
                                    }
                                ],
                            }
                        ],
                    },
                },
            ),
            (
                "localqueues",
                "default",
                {
                    "kind": "LocalQueue",
                    "metadata": {"name": LOCAL_QUEUE, "namespace": "default"},
                    "spec": {"clusterQueue": "gpuslice-train"},
                },
            ),
        ]
        for plural, namespace, body in objects:
            body = {"apiVersion": f"{group}/{version}", **body}
            try:
                if namespace:
                    await custom.create_namespaced_custom_object(group, version, namespace, plural, body)
                else:
                    await custom.create_cluster_custom_object(group, version, plural, body)
            except ApiException as error:
                if error.status != 409:
                    raise


@pytest.fixture(scope="module")
def kueue(cluster, tmp_path_factory):
    """Kueue's controller running against the test control plane, with a LocalQueue of 8 GPUs."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("kueue")
    _serving_certificate(workdir / "certs")
    health_port, webhook_port = free_port(), free_port()
    config = workdir / "kueue.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "config.kueue.x-k8s.io/v1beta2",
                "kind": "Configuration",
                "namespace": "kueue-system",
                "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
                "metrics": {"bindAddress": "0"},
                "webhook": {"port": webhook_port, "host": "127.0.0.1", "certDir": str(workdir / "certs")},
                "leaderElection": {"leaderElect": False},
                "internalCertManagement": {"enable": False},
                "integrations": {"frameworks": ["batch/job"]},
            }
        )
    )
    asyncio.run(_install(cluster))
    log_path = workdir / "kueue.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            _in_own_etc(
                workdir,
                [
                    str(KUEUE),
                    f"--config={config}",
                    "--feature-gates=VisibilityOnDemand=false",
                    "--zap-log-level=2",
                ],
            ),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": cluster},
            cwd=workdir,
            start_new_session=True,
        )

    def tail() -> str:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])

    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"kueue exited with {process.returncode}:\n{tail()}")
            try:
                if requests.get(f"http://127.0.0.1:{health_port}/readyz", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"kueue not ready after {START_TIMEOUT_S} s:\n{tail()}")
            time.sleep(0.5)
        yield tail
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


async def _workload_admitted(kubeconfig: str, job_uid: str) -> dict | None:
    """The Workload Kueue made for the Job (owned by it), once admitted."""
    from kubernetes_asyncio import client

    async with await api(kubeconfig) as api_client:
        listed = await client.CustomObjectsApi(api_client).list_namespaced_custom_object(
            "kueue.x-k8s.io", "v1beta2", "default", "workloads"
        )
    for workload in listed["items"]:
        owners = {owner["uid"] for owner in workload["metadata"].get("ownerReferences", [])}
        conditions = {c["type"]: c["status"] for c in workload.get("status", {}).get("conditions", [])}
        if job_uid in owners and conditions.get("Admitted") == "True":
            return workload
    return None


def test_kueue_admits_the_suspended_job_of_kueue_mode_and_it_runs(kueue, cluster, tmp_path):
    async def main():
        run = executor(cluster, tmp_path)
        run.local_queue = LOCAL_QUEUE
        job = spec(gpus=2)
        try:
            await run.start(job)
            created = await run._read_job(job.job_id)
            assert created["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == LOCAL_QUEUE
            # Kueue's controller, not gpuslice, lets it run: it unsuspends the Job once admitted.
            workload = await eventually(
                "the Job's Workload admitted by Kueue",
                lambda: _workload_admitted(cluster, created["metadata"]["uid"]),
            )
            (assignment,) = workload["status"]["admission"]["podSetAssignments"]
            assert assignment["flavors"]["nvidia.com/gpu"] == "gpuslice-a100"
            assert assignment["resourceUsage"]["nvidia.com/gpu"] == "2"

            async def unsuspended():
                return (await run._read_job(job.job_id))["spec"].get("suspend") is False

            await eventually("the Job unsuspended by Kueue", unsuspended)
            pod = await running_pod(run, job.job_id)
            assert pod["spec"]["nodeName"] == TRAIN_NODES[0]
            assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
            await end_process(cluster, pod, 0)
            status = await ended(run, job.job_id)
            assert (status.exit_code, status.stopped) == (0, False)
        finally:
            await run.forget(job.job_id)
            await run.close()

    try:
        asyncio.run(main())
    except AssertionError as error:
        raise AssertionError(f"{error}\n--- kueue log ---\n{kueue()}") from None
