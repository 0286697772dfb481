"""The configurable front the hub and the service use: one place that decides where GPUs come from.

``source = "auto"`` is what a fresh install wants: real GPUs when the driver sees some, else the
admin's static file, else simulated demo GPUs, each choice logged, so the same ``hub_config.py``
runs on a GPU server and on a laptop.
"""

from __future__ import annotations

import asyncio

from traitlets import (
    Bool,
    CaselessStrEnum,
    Dict,
    Float,
    Int,
    List,
    TraitError,
    Unicode,
    Union,
    observe,
    validate,
)
from traitlets.config import Configurable

from spawner.core.units import Node
from spawner.core.vocabulary import DEV_POOL, TRAIN_POOL

from . import nvml, simulated, static
from .base import POOL_LABEL, InventoryConfigError, PoolRule, log, parse_pools
from .kube import ClusterNodes, kube_api_client


class Inventory(Configurable):
    """Where the allocator's GPUs come from, configured as ``c.Inventory.*``."""

    source = CaselessStrEnum(
        ["auto", "nvml", "static", "simulated", "kubernetes"],
        default_value="auto",
        help="""
        Where GPUs come from.

        - "nvml": this host's NVIDIA GPUs, read through NVML; none if the driver is missing.
        - "static": the YAML file in `static_path` (for GPUs the hub cannot see itself).
        - "simulated": demo GPUs on this host, labelled simulated, for machines without a GPU.
        - "kubernetes": the GPU nodes of the cluster (Node objects and their GPU feature-discovery
          labels, pools from the `kube_pool_label` label), kept current by a watch while the
          service runs; a node that leaves fails the jobs and frees the leases on it.
        - "auto": NVML; if it finds no GPU, the static file when `static_path` is set, else
          simulated demo GPUs.
        """,
    ).tag(config=True)

    node_name = Unicode(
        "",
        help="""
        Node name for GPUs found on this host (NVML and simulated). Empty means the host name.
        """,
    ).tag(config=True)

    kubeconfig = Unicode(
        "",
        help="""
        A kubeconfig file to read the cluster's nodes with (source "kubernetes"); empty: the
        in-cluster service account when running in a pod, else $KUBECONFIG or ~/.kube/config.
        """,
    ).tag(config=True)

    kube_pool_label = Unicode(
        POOL_LABEL,
        help="""
        The node label naming a Kubernetes node's GPU pools (source "kubernetes"): "dev", "train"
        or "dev,train"; a GPU node without it joins `default_pools`.
        """,
    ).tag(config=True)

    kube_node_labels = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        help="""
        Labels a Kubernetes node must carry for its GPUs to be gpuslice's (source "kubernetes"),
        e.g. {"gpuslice.io/managed": "true"} where other GPU nodes of the cluster belong to other
        tenants. Empty: every GPU node.
        """,
    ).tag(config=True)

    static_path = Unicode(
        "",
        help="""
        Path of the static inventory YAML (see profiles/gpus.example.yaml), used when `source`
        is "static", and by "auto" when NVML finds no GPU.
        """,
    ).tag(config=True)

    default_pools = List(
        Unicode(),
        default_value=[DEV_POOL],
        help="""
        Pools that GPUs found by NVML (or simulated) join unless `train_gpu_indices` or
        `gpu_pools` say otherwise: any of "dev", "train", or ["dev", "train"] for both. Left
        unset, with no GPU named in the other two, each host is split by `train_share`.
        """,
    ).tag(config=True)

    train_gpu_indices = List(
        Int(min=0),
        help="""
        Indices of this host's GPUs reserved for training (pool "train"), e.g. [4, 5, 6, 7]
        to slice GPUs 0-3 for notebooks and queue batch jobs on the rest.
        """,
    ).tag(config=True)

    train_share = Float(
        0.5,
        min=0.0,
        max=1.0,
        help="""
        Share of each host's GPUs that join the training pool when the admin names none
        (`train_gpu_indices`, `gpu_pools` and `default_pools` all left unset): the last
        floor(count * train_share) GPUs by index train, the others are sliced for notebooks.

        The default, one half, is the split of the published case study this product is measured
        against (32 cards: 16 sliced for developers, 16 for the training queue), so that a fresh
        install shows both halves of the product: 4 GPUs give 2 dev + 2 train, 8 give 4 + 4, and
        1 GPU stays dev (batch jobs still borrow it while it is idle). 0 keeps every GPU in
        `default_pools`.
        """,
    ).tag(config=True)

    gpu_pools = Dict(
        key_trait=Unicode(),
        value_trait=Union([Unicode(), List(Unicode())]),
        help="""
        Pools of individual GPUs, by uuid or by index (as a string): e.g.
        {"GPU-5c1f...": "train", "3": ["dev", "train"]}. Takes precedence over
        `train_gpu_indices` and `default_pools`. "both" means dev and train.
        """,
    ).tag(config=True)

    simulated_gpu_count = Int(
        simulated.DEFAULT_COUNT,
        min=1,
        help="How many simulated demo GPUs to serve when the source is (or falls back to) simulated.",
    ).tag(config=True)

    simulated_gpu_model = Unicode(
        simulated.DEFAULT_MODEL,
        help="""
        Model of the simulated demo GPUs, as profiles name it (e.g. "A100-80GB"). Every place that
        shows them adds "(simulated)", so they are never taken for real cards.
        """,
    ).tag(config=True)

    simulated_gpu_memory_mib = Int(
        simulated.DEFAULT_MEMORY_MIB,
        min=1,
        help="Memory of each simulated demo GPU, in MiB.",
    ).tag(config=True)

    _default_pools_chosen = Bool(False)  # set once an admin gives default_pools, even to its default

    @observe("default_pools")
    def _note_default_pools_chosen(self, change) -> None:
        self._default_pools_chosen = True

    @validate("default_pools")
    def _valid_default_pools(self, proposal):
        try:
            parse_pools(proposal.value)
        except ValueError as error:
            raise TraitError(f"Inventory.default_pools: {error}") from error
        return proposal.value

    @validate("gpu_pools")
    def _valid_gpu_pools(self, proposal):
        for gpu, pools in proposal.value.items():
            try:
                parse_pools(pools)
            except ValueError as error:
                raise TraitError(f"Inventory.gpu_pools[{gpu!r}]: {error}") from error
        return proposal.value

    @property
    def pool_rule(self) -> PoolRule:
        """The pools of discovered GPUs as configured: per-GPU choices, then the default; the
        host's split by ``train_share`` only where the admin chose no pool at all."""
        by_gpu = {str(index): frozenset({TRAIN_POOL}) for index in self.train_gpu_indices}
        by_gpu.update({gpu: parse_pools(pools) for gpu, pools in self.gpu_pools.items()})
        chosen = by_gpu or self._default_pools_chosen
        return PoolRule(
            default=parse_pools(self.default_pools),
            by_gpu=by_gpu,
            train_share=0.0 if chosen else self.train_share,
        )

    def discover(self) -> list[Node]:
        """The nodes and GPUs from the configured source; blocks on NVML and file reads.

        Raises :class:`InventoryConfigError` when the static file is needed and is unusable, since
        an admin who wrote one wants to hear about its mistakes rather than get demo GPUs.
        """
        if self.source == "nvml":
            return self._nvml()
        if self.source == "static":
            return self._static()
        if self.source == "simulated":
            return self._simulated()
        if self.source == "kubernetes":
            # A worker thread's own event loop (discover_async reads the cluster on the caller's).
            return asyncio.run(self._kube_nodes())
        nodes = self._nvml()
        if any(node.gpus for node in nodes):
            return nodes
        if self.static_path:
            log.info("NVML found no GPU on this host; using the static GPU inventory in %s", self.static_path)
            return self._static()
        log.warning(
            "NVML found no GPU on this host and Inventory.static_path is not set: serving %d "
            "%s (simulated) GPUs so that the hub can be tried out. They do no real work; "
            "set Inventory.source to silence this.",
            self.simulated_gpu_count,
            self.simulated_gpu_model,
        )
        return self._simulated()

    async def discover_async(self) -> list[Node]:
        """:meth:`discover` in a worker thread, so the service's event loop is never blocked."""
        if self.source == "kubernetes":
            return await self._kube_nodes()
        return await asyncio.to_thread(self.discover)

    async def cluster_nodes(self) -> ClusterNodes:
        """The cluster's nodes (source "kubernetes"), read once: its ``nodes`` are the GPU nodes
        now, and its ``watch()`` follows them. The caller closes its ``api_client`` when done.

        Raises :class:`InventoryConfigError` when the cluster cannot be reached or refuses to list
        its nodes, naming the kubeconfig, since a service without its GPUs cannot serve.
        """
        try:
            api_client = await kube_api_client(self.kubeconfig)
        except Exception as error:
            where = self.kubeconfig or "the in-cluster service account, $KUBECONFIG or ~/.kube/config"
            raise InventoryConfigError(
                "Inventory", [f'Inventory.source is "kubernetes" but {where} could not be read: {error}']
            ) from error
        cluster = ClusterNodes(
            api_client,
            pool_label=self.kube_pool_label,
            default_pools=parse_pools(self.default_pools),
            node_labels=self.kube_node_labels,
        )
        try:
            await cluster.list()
        except Exception as error:
            await api_client.close()
            host = api_client.configuration.host
            raise InventoryConfigError(
                "Inventory", [f"the nodes of the Kubernetes cluster at {host} could not be listed: {error}"]
            ) from error
        return cluster

    async def _kube_nodes(self) -> list[Node]:
        cluster = await self.cluster_nodes()
        await cluster.api_client.close()
        return list(cluster.nodes.values())

    def _nvml(self) -> list[Node]:
        return nvml.discover(node_name=self.node_name or None, pools=self.pool_rule)

    def _static(self) -> list[Node]:
        if not self.static_path:
            raise InventoryConfigError(
                "Inventory",
                [
                    'Inventory.source is "static" but Inventory.static_path is not set; '
                    "point it at a YAML file such as profiles/gpus.example.yaml"
                ],
            )
        return static.load_static(self.static_path)

    def _simulated(self) -> list[Node]:
        return simulated.simulated_nodes(
            node_name=self.node_name or None,
            count=self.simulated_gpu_count,
            model=self.simulated_gpu_model,
            memory_mib=self.simulated_gpu_memory_mib,
            pools=self.pool_rule,
        )
