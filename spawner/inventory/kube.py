"""GPUs of a Kubernetes cluster, read from its v1 Node objects and GPU feature-discovery labels.

NVIDIA's GPU feature discovery labels every GPU node with ``nvidia.com/gpu.count``,
``nvidia.com/gpu.product`` and ``nvidia.com/gpu.memory`` (MiB); those, not the
``nvidia.com/gpu`` resource count, say what the cards are, since time-slicing multiplies the
resource count by its replicas. :func:`nodes_from_kube` is a pure function of the Node JSON, so
that whatever reads nodes reads them the same way; :class:`ClusterNodes` lists a cluster's nodes
with it and keeps them current by a watch (tests/kube runs it against a real API server).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from spawner.core.units import DEFAULT_POOLS, GPU, Node

from .base import POOL_LABEL, SOURCE_LABEL, log, parse_pools
from .gpu_names import normalise_model

GPU_COUNT_LABEL = "nvidia.com/gpu.count"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
MIG_CAPABLE_LABEL = "nvidia.com/mig.capable"
GPU_RESOURCE = "nvidia.com/gpu"

MIB = 1024 * 1024

_SUFFIXES = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)([a-zA-Z]*)$")


def parse_quantity(quantity: str | int | float) -> Decimal:
    """A Kubernetes resource quantity ('63500m', '515948Mi', '1e9', '64') as a plain number."""
    match = _QUANTITY.match(str(quantity).strip())
    if not match or match.group(2) not in _SUFFIXES:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity")
    try:
        return Decimal(match.group(1)) * _SUFFIXES[match.group(2)]
    except InvalidOperation as error:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity") from error


KUBE_UUID_PREFIX = "GPU-kube-"
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def kube_uuid(node_name: str, index: int) -> str:
    """A stable placeholder uuid: Node objects do not carry GPU UUIDs, only counts and models."""
    return f"{KUBE_UUID_PREFIX}{node_name}-{index}"


def node_of_kube_uuid(uuid: str) -> str | None:
    """The node name in a :func:`kube_uuid` (None for any other uuid), so that a run placed on
    these GPUs can be pinned to the node the allocator chose."""
    if not uuid.startswith(KUBE_UUID_PREFIX):
        return None
    node, _, index = uuid.removeprefix(KUBE_UUID_PREFIX).rpartition("-")
    return node if node and index.isdigit() else None


async def kube_api_client(kubeconfig: str = "") -> Any:
    """A ``kubernetes_asyncio`` API client: from ``kubeconfig`` if given; else the pod's service
    account when running in a cluster, else $KUBECONFIG or ~/.kube/config. The caller closes it."""
    from kubernetes_asyncio import client, config

    configuration = client.Configuration()
    in_cluster = await asyncio.to_thread(Path(SERVICE_ACCOUNT_TOKEN).exists)
    if kubeconfig or not in_cluster:
        await config.load_kube_config(config_file=kubeconfig or None, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def nodes_from_kube(
    node_objects: Iterable[Mapping[str, Any]],
    *,
    pool_label: str = POOL_LABEL,
    default_pools: frozenset[str] = DEFAULT_POOLS,
    include_unschedulable: bool = False,
) -> list[Node]:
    """Nodes (with their GPUs) from the JSON of v1 Node objects, e.g. a NodeList's ``items``.

    Cordoned nodes are left out unless ``include_unschedulable``, so nothing new is placed on a
    node being drained. A node whose GPU labels cannot be read keeps its CPU and memory but no
    GPUs, with a warning naming the label; one odd node must not hide the rest of the cluster.
    """
    nodes = []
    for node_object in node_objects:
        metadata = node_object.get("metadata", {})
        name = metadata.get("name", "")
        if not name:
            log.warning("a Kubernetes Node object without metadata.name was left out of the inventory")
            continue
        if node_object.get("spec", {}).get("unschedulable") and not include_unschedulable:
            continue
        labels = dict(metadata.get("labels") or {})
        status = node_object.get("status", {})
        resources = {**(status.get("capacity") or {}), **(status.get("allocatable") or {})}
        pools = _pools(name, labels, pool_label, default_pools)
        nodes.append(
            Node(
                name=name,
                cpu_milli=_resource(name, resources, "cpu", 1000),
                memory_mib=_resource(name, resources, "memory", Decimal(1) / MIB),
                gpus=_gpus(name, labels, status, pools),
                labels={**labels, SOURCE_LABEL: "kubernetes"},
            )
        )
    return nodes


def _resource(node: str, resources: Mapping[str, Any], key: str, scale: int | Decimal) -> int:
    """Allocatable (else capacity) ``key`` times ``scale``, rounded down; 0 when unreadable."""
    if key not in resources:
        return 0
    try:
        return int(parse_quantity(resources[key]) * scale)
    except ValueError:
        log.warning("node %s: %s %r is not a Kubernetes quantity; counted as 0", node, key, resources[key])
        return 0


def _pools(node: str, labels: Mapping[str, str], pool_label: str, default: frozenset[str]) -> frozenset[str]:
    if pool_label not in labels:
        return default
    try:
        return parse_pools(labels[pool_label])
    except ValueError as error:
        log.warning(
            "node %s: label %s=%r: %s; its GPUs join the default pools %s",
            node,
            pool_label,
            labels[pool_label],
            error,
            ", ".join(sorted(default)),
        )
        return default


def _positive_int_label(node: str, labels: Mapping[str, str], label: str) -> int | None:
    value = labels.get(label)
    if value is not None and value.isdigit() and int(value) > 0:
        return int(value)
    log.warning(
        "node %s: label %s=%r is not a positive integer; the node's GPUs are left out of the inventory",
        node,
        label,
        value,
    )
    return None


def _gpus(
    node: str, labels: Mapping[str, str], status: Mapping[str, Any], pools: frozenset[str]
) -> tuple[GPU, ...]:
    if GPU_COUNT_LABEL not in labels:
        advertised = (status.get("capacity") or {}).get(GPU_RESOURCE)
        if advertised not in (None, "0", 0):
            log.warning(
                "node %s advertises %s=%s but has no GPU feature-discovery labels (%s); its GPUs are "
                "left out of the inventory until gpu-feature-discovery runs on it",
                node,
                GPU_RESOURCE,
                advertised,
                GPU_COUNT_LABEL,
            )
        return ()
    count = _positive_int_label(node, labels, GPU_COUNT_LABEL)
    memory_mib = _positive_int_label(node, labels, GPU_MEMORY_LABEL) if count else None
    if count is None or memory_mib is None:
        return ()
    raw_product = labels.get(GPU_PRODUCT_LABEL, "unknown")
    model = normalise_model(raw_product)
    # Under the "single" MIG strategy each advertised GPU is a MIG instance, which cannot be split again.
    is_mig_instance = "-MIG-" in raw_product.upper()
    mig_capable = labels.get(MIG_CAPABLE_LABEL) == "true" and not is_mig_instance
    return tuple(
        GPU(
            uuid=kube_uuid(node, index),
            node=node,
            index=index,
            model=model,
            memory_mib=memory_mib,
            pools=pools,
            mig_capable=mig_capable,
        )
        for index in range(count)
    )


class ClusterNodes:
    """The cluster's nodes as gpuslice sees them, listed once and kept current by a watch.

    ``nodes`` maps each node's name to its :class:`~spawner.core.units.Node` (GPUs from the
    feature-discovery labels, see :func:`nodes_from_kube`). Any change of the map (a node added,
    its GPUs changed, a node cordoned or deleted) awaits ``on_change()``, so that its owner keeps
    a copy (the ledger's inventory) the same: a cordoned node leaves the map (nothing new goes
    there) while what runs on it goes on. A node deleted from the cluster also awaits
    ``on_node_gone(name)``, before ``on_change()``: nothing runs there any more, so its owner can
    fail and free the leases on it at once rather than when their pods' deletion is noticed. The
    watch resumes from the last resource version it saw, and lists again when the API server says
    that version is too old (HTTP 410), as client-go's reflector does.
    """

    def __init__(
        self,
        api_client: Any,
        *,
        pool_label: str = POOL_LABEL,
        default_pools: frozenset[str] = DEFAULT_POOLS,
        on_node_gone: Any = None,
        on_change: Any = None,
        node_labels: Mapping[str, str] | None = None,
    ) -> None:
        self.api_client = api_client
        self.node_labels = dict(node_labels or {})
        """Only nodes with all these labels are gpuslice's (none: every GPU node)."""
        self.pool_label = pool_label
        self.default_pools = default_pools
        self.on_node_gone = on_node_gone
        self.on_change = on_change
        self.nodes: dict[str, Node] = {}
        self.in_cluster: set[str] = set()
        """The names of every Node object seen and not deleted (cordoned and GPU-less ones too)."""
        self.resource_version = ""

    def _parse(self, node_object: Mapping[str, Any]) -> Node | None:
        labels = node_object.get("metadata", {}).get("labels") or {}
        if any(labels.get(key) != value for key, value in self.node_labels.items()):
            return None  # not gpuslice's; one that stops matching leaves as a cordoned one does
        parsed = nodes_from_kube([node_object], pool_label=self.pool_label, default_pools=self.default_pools)
        return parsed[0] if parsed else None

    async def list(self) -> list[Node]:
        """Read every node now; returns them and remembers where a watch resumes."""
        from kubernetes_asyncio import client

        response = await client.CoreV1Api(self.api_client).list_node(_preload_content=False)
        node_list = await response.json()
        self.resource_version = node_list["metadata"].get("resourceVersion", "")
        listed, in_cluster = {}, set()
        for node_object in node_list.get("items", []):
            in_cluster.add(node_object["metadata"]["name"])
            node = self._parse(node_object)
            if node is not None:
                listed[node.name] = node
        deleted = self.in_cluster - in_cluster
        changed = listed != self.nodes
        self.nodes, self.in_cluster = listed, in_cluster
        for name in sorted(deleted):
            await self._gone(name)
        if changed:
            await self._changed()
        return list(listed.values())

    async def _changed(self) -> None:
        if self.on_change is not None:
            await self.on_change()

    async def _gone(self, name: str) -> None:
        log.warning("node %s was deleted from the cluster; what ran there has ended", name)
        if self.on_node_gone is not None:
            await self.on_node_gone(name)

    async def apply(self, event_type: str, node_object: Mapping[str, Any]) -> None:
        """One watch event: a node added, changed (cordoned: it leaves the map) or deleted."""
        name = node_object.get("metadata", {}).get("name", "")
        version = node_object.get("metadata", {}).get("resourceVersion")
        if version:
            self.resource_version = version
        if event_type == "DELETED":
            self.in_cluster.discard(name)
            known = self.nodes.pop(name, None)
            await self._gone(name)
            if known is not None:
                await self._changed()
            return
        self.in_cluster.add(name)
        node = self._parse(node_object)
        if node is not None and self.nodes.get(name) != node:
            self.nodes[name] = node
            await self._changed()
        elif node is None and name in self.nodes:
            del self.nodes[name]
            log.info("node %s was cordoned (or lost its GPUs): nothing new is placed there", name)
            await self._changed()

    async def watch(self, timeout_seconds: int = 300) -> None:
        """Follow the nodes until cancelled: list, then apply every watch event, resuming as it ends."""
        from kubernetes_asyncio import client, watch
        from kubernetes_asyncio.client.exceptions import ApiException

        core = client.CoreV1Api(self.api_client)
        await self.list()
        while True:
            stream = watch.Watch()
            try:
                async for event in stream.stream(
                    core.list_node, resource_version=self.resource_version, timeout_seconds=timeout_seconds
                ):
                    if event["type"] == "ERROR":
                        raise ApiException(status=event["raw_object"].get("code", 500))
                    await self.apply(event["type"], event["raw_object"])
            except ApiException as error:
                if error.status != 410:
                    raise
                await self.list()
            finally:
                stream.stop()
