"""A real Kubernetes control plane on loopback ports, for the tests of Kubernetes mode.

etcd, kube-apiserver (TLS with certificates made here, client-certificate auth, RBAC, the default
admission plugins), kube-controller-manager (the Job, garbage-collector, service-account
controllers), kube-scheduler, and kwok, which runs the fake GPU nodes: it keeps them Ready with the
capacity they were created with and moves the pods bound to them through their phases
(``kwok_stages.yaml``). The binaries come from ``build_control_plane.sh`` (in
``~/.cache/gpuslice-kube/<release>/bin``); nothing of the API server or its objects is faked.

With ``KUBECONFIG`` set, :func:`cluster_or_skip` uses that cluster instead and starts nothing.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
from harness import free_port

HERE = Path(__file__).resolve().parent
KUBE_VERSION = os.environ.get("GPUSLICE_KUBE_VERSION", "v1.37.2")
CACHE = Path(os.environ.get("GPUSLICE_KUBE_CACHE", Path.home() / ".cache" / "gpuslice-kube"))
BIN = CACHE / KUBE_VERSION / "bin"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
START_TIMEOUT_S = 120
JOB_LOG_LINES = "epoch 1: loss 0.91\nepoch 2: loss 0.47\n"
"""What every container of a kwok pod in the default namespace prints, as the API reads its log."""


def missing_reason() -> str | None:
    """Why the control plane cannot start here, or None."""
    absent = [name for name in BINARIES if not (BIN / name).is_file()]
    if not absent:
        return None
    go = "go is on PATH" if shutil.which("go") else "go is not on PATH"
    return (
        f"no Kubernetes control plane: {', '.join(absent)} not built in {BIN} ({go}; "
        "build with tests/kube/build_control_plane.sh, or `make test` does when go is there; "
        "or set KUBECONFIG to a cluster)"
    )


@dataclass
class ControlPlane:
    """The processes of one control plane, its kubeconfig, and where their logs are."""

    workdir: Path
    kubeconfig: Path = field(init=False)
    api_url: str = field(init=False)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def tails(self, lines: int = 15) -> str:
        parts = []
        for name in self.processes:
            text = self.log(name).read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {name} (exit {self.processes[name].poll()}) ---\n" + "\n".join(text))
        return "\n".join(parts)

    def spawn(self, name: str, argv: list[str]) -> None:
        with self.log(name).open("ab") as log_file:
            self.processes[name] = subprocess.Popen(
                argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True
            )

    def check_running(self) -> None:
        ended = [name for name, process in self.processes.items() if process.poll() is not None]
        if ended:
            raise RuntimeError(f"control plane: {', '.join(ended)} exited\n{self.tails()}")

    def stop(self) -> None:
        """SIGTERM every process (each in its own session, so with its children), then SIGKILL."""
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _certificates(workdir: Path) -> dict[str, Path]:
    """A CA, the API server's serving certificate, an admin client certificate (system:masters)
    and the service-account signing key, as PEM files in ``workdir``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2))

    def key_pem(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def name(common: str, org: str | None = None) -> x509.Name:
        parts = [x509.NameAttribute(NameOID.COMMON_NAME, common)]
        if org:
            parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(parts)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("gpuslice-test-ca"))
        .issuer_name(name("gpuslice-test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )

    def issue(common: str, org: str | None, usage, sans=None):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common, org))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid[0])
            .not_valid_after(valid[1])
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    server_key, server_cert = issue(
        "kube-apiserver",
        None,
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
        ],
    )
    admin_key, admin_cert = issue("gpuslice-test-admin", "system:masters", ExtendedKeyUsageOID.CLIENT_AUTH)
    service_account_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files = {
        "ca.crt": ca_cert.public_bytes(serialization.Encoding.PEM),
        "server.crt": server_cert.public_bytes(serialization.Encoding.PEM),
        "server.key": key_pem(server_key),
        "admin.crt": admin_cert.public_bytes(serialization.Encoding.PEM),
        "admin.key": key_pem(admin_key),
        "sa.key": key_pem(service_account_key),
        "sa.pub": service_account_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    paths = {}
    for filename, content in files.items():
        path = workdir / filename
        path.write_bytes(content)
        path.chmod(0o600)
        paths[filename] = path
    return paths


def _kubeconfig(path: Path, server: str, certs: dict[str, Path]) -> None:
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: gpuslice-test
  cluster:
    server: {server}
    certificate-authority: {certs["ca.crt"]}
users:
- name: admin
  user:
    client-certificate: {certs["admin.crt"]}
    client-key: {certs["admin.key"]}
contexts:
- name: gpuslice-test
  context: {{cluster: gpuslice-test, user: admin, namespace: default}}
current-context: gpuslice-test
"""
    )


def _kwok_logs(workdir: Path) -> Path:
    """kwok's ClusterLogs: every container of the default namespace's pods logs JOB_LOG_LINES."""
    log_file = workdir / "container.log"
    # the CRI log format a container runtime writes and the kubelet (here kwok) serves
    log_file.write_text(
        "".join(
            f"2026-01-01T00:00:0{n}.000000000Z stdout F {line}\n"
            for n, line in enumerate(JOB_LOG_LINES.splitlines())
        )
    )
    config = workdir / "kwok-logs.yaml"
    config.write_text(
        f"""apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterLogs
metadata:
  name: every-container
spec:
  selector:
    matchNamespaces: [default]
  logs:
  - logsFile: {log_file}
    follow: false
"""
    )
    return config


def _wait(what: str, check, plane: ControlPlane, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        plane.check_running()
        try:
            if check():
                return
        except (requests.RequestException, OSError) as error:
            last_error = error
        time.sleep(0.3)
    raise RuntimeError(
        f"control plane: {what} not ready after {timeout:.0f} s ({last_error})\n{plane.tails()}"
    )


@contextmanager
def control_plane(workdir: Path) -> Iterator[ControlPlane]:
    """Start etcd, the API server, the controller manager, the scheduler and kwok; stop them after."""
    plane = ControlPlane(workdir)
    certs = _certificates(workdir)
    etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
    plane.api_url = f"https://127.0.0.1:{api_port}"
    plane.kubeconfig = workdir / "admin.kubeconfig"
    _kubeconfig(plane.kubeconfig, plane.api_url, certs)
    try:
        plane.spawn(
            "etcd",
            [
                str(BIN / "etcd"),
                "--name=gpuslice-test",
                f"--data-dir={workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=gpuslice-test=http://127.0.0.1:{etcd_peer}",
                # a throw-away store: skipping fsync keeps a 2-core machine's disk out of the way
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        _wait(
            "etcd",
            lambda: requests.get(f"http://127.0.0.1:{etcd_port}/health", timeout=2).ok,
            plane,
        )
        plane.spawn(
            "kube-apiserver",
            [
                str(BIN / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={workdir / 'apiserver-certs'}",
                f"--tls-cert-file={certs['server.crt']}",
                f"--tls-private-key-file={certs['server.key']}",
                f"--client-ca-file={certs['ca.crt']}",
                f"--service-account-key-file={certs['sa.pub']}",
                f"--service-account-signing-key-file={certs['sa.key']}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--authorization-mode=Node,RBAC",
                # the default admission plugins are on; these are named so a change of defaults shows
                "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,LimitRanger,"
                "DefaultTolerationSeconds,ResourceQuota,PodSecurity,Priority",
                "--allow-privileged=true",
                # no kubernetes Service endpoints: a loopback address may not be one, and nothing
                # here reaches the API server through the in-cluster Service
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=1",
            ],
        )
        cert = (str(certs["admin.crt"]), str(certs["admin.key"]))
        _wait(
            "kube-apiserver",
            lambda: (
                requests.get(f"{plane.api_url}/readyz", cert=cert, verify=str(certs["ca.crt"]), timeout=3).ok
            ),
            plane,
        )
        common = [f"--kubeconfig={plane.kubeconfig}", "--bind-address=127.0.0.1", "--leader-elect=false"]
        plane.spawn(
            "kube-controller-manager",
            [
                str(BIN / "kube-controller-manager"),
                *common,
                f"--secure-port={free_port()}",
                f"--authentication-kubeconfig={plane.kubeconfig}",
                f"--authorization-kubeconfig={plane.kubeconfig}",
                f"--service-account-private-key-file={certs['sa.key']}",
                f"--root-ca-file={certs['ca.crt']}",
                "--controllers=*,-node-ipam-controller,-node-lifecycle-controller,-ttl-controller",
                "--use-service-account-credentials=false",
                "--v=1",
            ],
        )
        plane.spawn(
            "kube-scheduler",
            [
                str(BIN / "kube-scheduler"),
                *common,
                f"--secure-port={free_port()}",
                f"--authentication-kubeconfig={plane.kubeconfig}",
                f"--authorization-kubeconfig={plane.kubeconfig}",
                "--v=1",
            ],
        )
        kwok_port = free_port()
        plane.spawn(
            "kwok",
            [
                str(BIN / "kwok"),
                f"--kubeconfig={plane.kubeconfig}",
                f"--config={HERE / 'kwok_stages.yaml'}",
                f"--config={_kwok_logs(workdir)}",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                "--cidr=10.244.0.0/16",
                # the API server reads pod logs from the node's address and port: kwok's server
                "--node-ip=127.0.0.1",
                f"--node-port={kwok_port}",
                f"--server-address=127.0.0.1:{kwok_port}",
            ],
        )

        def default_service_account() -> bool:
            url = f"{plane.api_url}/api/v1/namespaces/default/serviceaccounts/default"
            return requests.get(url, cert=cert, verify=str(certs["ca.crt"]), timeout=3).ok

        # Pods are refused until the service-account controller has made the namespace's account.
        _wait("the default service account", default_service_account, plane)
        yield plane
    finally:
        plane.stop()
