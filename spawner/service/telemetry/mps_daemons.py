"""``MPSDaemons``: the service's CUDA MPS control daemons, one per shared GPU of the pools chosen.

Whether a pool uses MPS is a per-pool choice (``MPSDaemons.pools``), because MPS trades isolation
for hard limits (see :mod:`spawner.enforce.mps` for its limits: one Linux user per MPS server at
a time, and a fatal fault in one client reaching every client on that card). A pool whose
servers all run as one account and whose users accept the shared fault domain gets hard memory
and SM limits; a pool of many Linux users keeps the NVML watchdog (``GPUMonitor.enforcement``).

The limits each daemon sets before any client connects are those of the smallest slice that can
land on its card (the profiles' fractional requests allowed on it): a client that reached the
card without the service sizing it cannot take more than anyone's slice. A slice's own, larger
limits are set on an MPS server of the user's own account, started for them before their first
client connects where it can be (:meth:`MPSDaemons.prepare_servers`, at each GPU monitor sample):
a client that connects in the seconds before gets the card's default, never more.
"""

from __future__ import annotations

import asyncio
import math
import os
import pwd
import shutil
from collections.abc import Iterable, Sequence

import psutil
from traitlets import Float, List, Unicode, default
from traitlets.config import LoggingConfigurable

from spawner.core.units import GPU, MILLI_PER_GPU, Lease, Node, SliceRequest
from spawner.enforce.mps import (
    CONTROL_PROGRAM,
    MPSControl,
    MPSError,
    MPSLimits,
    default_root,
    has_card_daemon,
    pools_from_environment,
)
from spawner.inventory import SOURCE_LABEL

from ..paths import state_dir


def slice_limits(milli_gpu: int, memory_mib: int) -> MPSLimits:
    """The MPS limits of a slice: its memory, and its share of SMs rounded up (as the client
    variables are, spawner.enforce.env: eight 1/8 slices still start)."""
    percentage = min(100, math.ceil(milli_gpu * 100 / MILLI_PER_GPU))
    return MPSLimits(memory_mib=memory_mib, active_thread_percentage=percentage)


def account_uid(user: str) -> int | None:
    """The uid of the system account named like the hub user, or None (servers not run as users)."""
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def smallest_slice_limits(gpu: GPU, requests: Iterable[SliceRequest]) -> MPSLimits | None:
    """The limits of the smallest fractional slice that may be placed on ``gpu``; None if none may."""
    fractional = [request for request in requests if request.is_fractional and request.allows(gpu)]
    if not fractional:
        return None
    smallest = min(fractional, key=lambda request: (request.milli_gpu, request.gpu_memory_on(gpu)))
    return slice_limits(smallest.milli_gpu, smallest.gpu_memory_on(gpu))


class MPSDaemons(LoggingConfigurable):
    """Starts, checks and stops the MPS control daemons of this host's shared GPUs."""

    pools = List(
        Unicode(),
        [],
        help="""
        GPU pools whose cards are shared through CUDA MPS, with limits set by the service on each
        card's control daemon (e.g. ['dev']). Empty (the default): no daemon is started, and
        slices are held to their size by GPUMonitor.enforcement. The hub must be told the same
        pools and root (c.GPUSliceSpawnerMixin.mps_pools / mps_root), so that a server holding a
        slice of such a card is given that card's CUDA_MPS_PIPE_DIRECTORY. Default: the
        comma-separated $GPUSLICE_MPS_POOLS, which the hub's mps_pools defaults to as well.
        """,
    ).tag(config=True)

    @default("pools")
    def _default_pools(self) -> list[str]:
        return pools_from_environment(os.environ)

    root = Unicode(
        help="""
        Directory under which each card's daemon gets <uuid>/pipe (CUDA_MPS_PIPE_DIRECTORY) and
        <uuid>/log (CUDA_MPS_LOG_DIRECTORY). Default: $GPUSLICE_STATE_DIR (or ./var)/mps, as
        the hub's c.GPUSliceSpawnerMixin.mps_root, which must name the same directory.
        """,
    ).tag(config=True)

    @default("root")
    def _default_root(self) -> str:
        return str(default_root(state_dir()))

    program = Unicode(
        CONTROL_PROGRAM,
        help="The MPS control program (found on PATH unless a path is given).",
    ).tag(config=True)

    health_interval_s = Float(
        30.0,
        help="Seconds between two checks that every daemon answers; one that does not is restarted.",
    ).tag(config=True)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.controls: dict[str, MPSControl] = {}
        self.limits: dict[str, MPSLimits] = {}
        self.servers: dict[tuple[str, int], tuple[int, MPSLimits]] = {}
        """(card uuid, uid) -> (MPS server pid, limits set on it), for the servers started here."""
        self.without_daemon: dict[str, str] = {}
        """Cards in an MPS pool that have no daemon, with why (logged once per card)."""

    def serves(self, gpu_uuid: str) -> bool:
        """Whether a daemon of this service runs for ``gpu_uuid``: what ``GET gpus`` tells the hub
        (``mps_daemon``), so that a server is pointed at a card's pipe only where one listens."""
        return gpu_uuid in self.controls

    def _no_daemon(self, gpu: GPU, why: str) -> None:
        if self.without_daemon.get(gpu.uuid) != why:
            self.without_daemon[gpu.uuid] = why
            self.log.warning(
                "MPS: GPU %s #%d (%s) is in an MPS pool but gets no daemon: %s; its slices are held "
                "by GPUMonitor.enforcement only",
                gpu.node,
                gpu.index,
                gpu.uuid,
                why,
            )

    def pooled_gpus(self, nodes: Sequence[Node]) -> list[tuple[GPU, str | None]]:
        """Every card in one of :attr:`pools`, with why it cannot get a daemon (None: it can)."""
        pooled = []
        for node in nodes:
            source = node.labels.get(SOURCE_LABEL, "")
            for gpu in node.gpus:
                if set(gpu.pools).isdisjoint(self.pools):
                    continue
                if gpu.simulated:
                    why: str | None = "it is a simulated GPU (no driver to run MPS with)"
                elif source != "nvml":
                    why = (
                        "NVML did not find it on this host (its inventory source is "
                        f"{source or 'unknown'!r}); the service runs daemons only for the cards NVML lists"
                    )
                else:
                    why = None
                pooled.append((gpu, why))
        return pooled

    def shared_gpus(self, nodes: Sequence[Node]) -> list[GPU]:
        """The real cards of this host in an MPS pool (simulated GPUs have no driver to run MPS)."""
        return [
            gpu
            for node in nodes
            if node.labels.get(SOURCE_LABEL) == "nvml"
            for gpu in node.gpus
            if has_card_daemon(gpu.pools, simulated=gpu.simulated, mps_pools=self.pools)
        ]

    def _program_missing(self) -> str | None:
        """Why the control program cannot be run, or None."""
        if os.sep in self.program:
            return None if os.access(self.program, os.X_OK) else f"{self.program} is not an executable file"
        return None if shutil.which(self.program) else f"{self.program} is not found on PATH"

    def start(self, nodes: Sequence[Node], requests: Iterable[SliceRequest]) -> list[str]:
        """Start a daemon with its default limits on each shared card; the uuids started (blocking)."""
        requests = list(requests)
        started = []
        for gpu, why in self.pooled_gpus(nodes):
            if why is not None:
                self._no_daemon(gpu, why)
        shared = self.shared_gpus(nodes)
        missing = self._program_missing() if shared else None
        if missing is not None:
            # Loud, and at start: an admin who chose MPS for a pool of real cards wants it, or to
            # hear at once why not, rather than servers silently held by the watchdog only.
            raise MPSError(
                f"MPSDaemons.pools {sorted(self.pools)} has {len(shared)} NVML card(s) but {missing}; "
                "install the NVIDIA driver's MPS tools or set MPSDaemons.program, or leave the pools out"
            )
        for gpu in shared:
            limits = smallest_slice_limits(gpu, requests)
            if limits is None:
                self._no_daemon(gpu, "no profile places a fractional slice on it")
                continue
            control = MPSControl(gpu.uuid, self.root, program=self.program)
            try:
                pid = control.start()
                control.set_default_limits(limits)
            except MPSError:
                # The service will not start: leave no daemon of its behind.
                self.controls[gpu.uuid] = control
                self.stop()
                raise
            self.controls[gpu.uuid] = control
            self.limits[gpu.uuid] = limits
            started.append(gpu.uuid)
            self.log.info(
                "MPS: daemon pid %d for GPU %s #%d, clients limited to %d MiB and %d%% of SMs by default",
                pid,
                gpu.node,
                gpu.index,
                limits.memory_mib,
                limits.active_thread_percentage,
            )
        return started

    def prepare_servers(self, leases: Sequence[Lease]) -> list[tuple[str, int, MPSLimits]]:
        """Per client limits, where MPS supports them: for each user holding slices on a card with
        a daemon, an MPS server of their own account, started before their first client connects
        and held to their slices there (``set_device_pinned_mem_limit`` and
        ``set_active_thread_percentage`` on that server). Returns what was set (blocking).

        MPS limits are per server, and a server serves one Linux user: where servers run as the
        users' own accounts each user gets their slice; where every server runs as one account
        (no system account named like the hub user) this sets nothing, and the card's default
        limits (the smallest slice) hold every client.
        """
        held: dict[tuple[str, int], tuple[int, int]] = {}
        for lease in leases:
            uid = account_uid(lease.user)
            if uid is None:
                continue
            for share in lease.placement.shares:
                if share.gpu_uuid in self.controls:
                    milli, memory = held.get((share.gpu_uuid, uid), (0, 0))
                    held[(share.gpu_uuid, uid)] = (milli + share.milli_gpu, memory + share.memory_mib)
        changed = []
        for (uuid, uid), (milli, memory) in held.items():
            limits = slice_limits(milli, memory)
            known = self.servers.get((uuid, uid))
            if known is not None and known[1] == limits:
                continue
            control = self.controls[uuid]
            try:
                pid = known[0] if known is not None else self._start_server(control, uid)
                control.set_server_limits(pid, limits)
            except MPSError as error:
                self.log.error("MPS: %s", error)
                continue
            self.servers[(uuid, uid)] = (pid, limits)
            changed.append((uuid, uid, limits))
        for gone in set(self.servers) - set(held):
            del self.servers[gone]
        return changed

    @staticmethod
    def _start_server(control: MPSControl, uid: int) -> int:
        """The MPS server the daemon runs for ``uid`` (started on a client's connect), or a new one."""
        before = set(control.server_pids())
        for pid in before:
            try:
                if psutil.Process(pid).uids().real == uid:
                    return pid
            except psutil.Error:
                continue
        control.command(f"start_server -uid {uid}")
        started = set(control.server_pids()) - before
        if len(started) != 1:
            raise MPSError(f"MPS daemon of {control.gpu_uuid} started no new server for uid {uid}")
        return started.pop()

    def unhealthy(self) -> list[str]:
        """The cards whose daemon does not answer (blocking)."""
        return [uuid for uuid, control in self.controls.items() if not control.healthy()]

    def restart_unhealthy(self) -> list[str]:
        """Start again, with their limits, the daemons that stopped answering (blocking)."""
        restarted = []
        for uuid in self.unhealthy():
            control = self.controls[uuid]
            self.log.error("MPS: the daemon of %s does not answer; starting it again", uuid)
            try:
                if control.pid() is not None:
                    control.stop()
                control.start()
                control.set_default_limits(self.limits[uuid])
            except MPSError as error:
                self.log.error("MPS: %s", error)
                continue
            restarted.append(uuid)
        return restarted

    async def watch(self) -> None:
        """Check the daemons every ``health_interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.health_interval_s)
            await asyncio.to_thread(self.restart_unhealthy)

    def stop(self) -> None:
        """Quit every daemon this service started (blocking)."""
        for uuid, control in self.controls.items():
            try:
                control.stop()
            except MPSError as error:
                self.log.error("MPS: %s", error)
            else:
                self.log.info("MPS: daemon of %s stopped", uuid)
        self.controls.clear()

    async def start_async(self, nodes: Sequence[Node], requests: Iterable[SliceRequest]) -> list[str]:
        return await asyncio.to_thread(self.start, nodes, list(requests))

    async def stop_async(self) -> None:
        await asyncio.to_thread(self.stop)
