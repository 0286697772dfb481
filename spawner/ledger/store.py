"""The ledger: the one durable record of which lease holds which part of which GPU.

Every grant and every release is one transaction that first takes the allocator lock (see
``engine``), then reads the live leases, decides with the same pure code the simulator runs
(``core.quota`` and ``core.placement``) and writes the result. Because the decision and the write
cannot be separated by another writer, no GPU is granted beyond its capacity and no user or group
beyond its quota, whether the writers are threads, processes or hub replicas.

The API is synchronous on purpose: the service calls it in a worker thread, so the hub's event
loop never waits on the database, and the simulator and tests call it directly.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import NamedTuple, TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ..core import quota
from ..core.cluster import CapacityError
from ..core.placement import ClusterState, WorkloadMix, get_policy
from ..core.quota import QuotaPolicy, Refusal, Usage
from ..core.units import MILLI_PER_GPU, Lease, Node, Placement, SliceRequest, WorkloadClass, gpus_by_uuid
from .engine import create_ledger_engine, is_busy, lock_allocator, lock_connection, reader
from .models import (
    Base,
    FairShareUsageRow,
    GPURow,
    GPUUsageRow,
    LeaseRow,
    LeaseShareRow,
    NodeRow,
    node_from_rows,
)
from .results import (
    AllocationResult,
    GPUHolder,
    InventorySync,
    LeaseConflictError,
    LeaseRecord,
    LedgerBusyError,
)

log = logging.getLogger(__name__)

Outcome = TypeVar("Outcome")

MAX_LEASE_ID_LENGTH = 255

EXACT_PLACEMENT_POLICY = "exact"
"""The policy name recorded for leases granted on a placement the batch scheduler chose."""


class Ledger:
    """Durable leases on SQLite (default, one machine) or PostgreSQL (by URL).

    ``clock`` gives the time when a call passes no ``now``; it is read after the allocator lock is
    taken, so the times of grants and releases are in the order they happened.

    ``workload_mix`` is the mix of request sizes the fragmentation-aware policies (``default``,
    ``fgd``) should expect. Without one they expect more of what is held now: the requests of the
    live leases and the one being placed, which is what FGD itself learns from the requests it
    sees, and the ledger (building a fresh cluster state per grant) would otherwise lose.
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 30.0,
        busy_retries: int = 5,
        workload_mix: WorkloadMix | None = None,
        echo: bool = False,
    ):
        self.url = url
        self.workload_mix = list(workload_mix) if workload_mix is not None else None
        self.clock = clock
        self.busy_retries = busy_retries
        self.engine: Engine = create_ledger_engine(url, busy_timeout_s=busy_timeout_s, echo=echo)
        self._writes = sessionmaker(self.engine, expire_on_commit=False)
        self._reads = sessionmaker(reader(self.engine), expire_on_commit=False)
        self._writers = threading.Lock()
        """Taken by every write transaction of this process (see :meth:`_write`)."""
        self._nodes: tuple[Node, ...] | None = None
        """The present nodes as this ledger's last :meth:`sync_inventory` left them (see :meth:`nodes`)."""
        self._inventory_syncs = 0
        """Syncs ended so far: a read of the nodes that a sync overtook is not kept (see :meth:`nodes`)."""

    def __repr__(self) -> str:
        return f"Ledger({self.engine.url.render_as_string(hide_password=True)!r})"

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    # -------------------------------------------------------------------------- transactions

    def _write(self, work: Callable[[Session], Outcome]) -> Outcome:
        """Run ``work`` in one transaction under the allocator lock, retrying a locked SQLite.

        The writers of this process first queue on :attr:`_writers`, which hands over the moment
        it is released: left to the database, a writer that finds SQLite locked polls for it,
        sleeping up to 100 ms between tries, so that concurrent submissions were served by sleeps
        (and PostgreSQL's advisory lock would tie up a pooled connection per waiter). The
        database's own lock still keeps writers of other processes out.
        """
        with self._writers:
            return self._write_locked(work)

    def _write_locked(self, work: Callable[[Session], Outcome]) -> Outcome:
        attempt = 0
        while True:
            try:
                with self._writes.begin() as session:
                    lock_allocator(session)
                    return work(session)
            except OperationalError as error:
                if not is_busy(error):
                    raise
                attempt += 1
                if attempt > self.busy_retries:
                    raise LedgerBusyError(
                        f"the ledger database {self.engine.url.database} stayed locked by other "
                        f"writers through {attempt} attempts; is another process holding a "
                        "transaction open?"
                    ) from error
                log.warning("ledger database locked; retrying (attempt %d)", attempt + 1)
                time.sleep(random.uniform(0.05, 0.2) * attempt)

    def _read(self, work: Callable[[Session], Outcome]) -> Outcome:
        with self._reads.begin() as session:
            return work(session)

    def create_schema(self) -> None:
        """Create the tables that do not exist yet; safe to call from every process at start."""
        with self.engine.begin() as connection:
            # Two replicas starting together would otherwise race to create the same tables.
            lock_connection(connection)
            Base.metadata.create_all(connection)
            # create_all makes the indexes of the tables it creates only: a ledger written by an
            # older version gains the indexes added since (the hot paths' queries rely on them).
            for table in Base.metadata.sorted_tables:
                for index in table.indexes:
                    index.create(connection, checkfirst=True)

    # ----------------------------------------------------------------------------- inventory

    def sync_inventory(self, nodes: Sequence[Node]) -> InventorySync:
        """Make the ledger's inventory ``nodes``, the complete current list.

        GPUs and nodes missing from the list are marked absent, not deleted: leases on them are
        kept (their holders still run somewhere, or will release) and reported as stranded, and
        no new lease is placed on them.
        """
        names = [node.name for node in nodes]
        if len(set(names)) != len(names):
            raise ValueError("the inventory lists a node twice")
        gpus = {gpu.uuid: gpu for node in nodes for gpu in node.gpus}
        if len(gpus) != sum(len(node.gpus) for node in nodes):
            raise ValueError("the inventory lists a GPU uuid twice")

        def work(session: Session) -> InventorySync:
            listed = set(names)
            node_rows = {row.name: row for row in session.scalars(select(NodeRow))}
            for node in nodes:
                row = node_rows.get(node.name)
                if row is None:
                    row = NodeRow(name=node.name)
                    session.add(row)
                row.cpu_milli, row.memory_mib = node.cpu_milli, node.memory_mib
                row.labels, row.present = dict(node.labels), True
            for name, row in node_rows.items():
                row.present = name in listed
            session.flush()  # nodes first: GPUs refer to them

            added, removed = [], []
            gpu_rows = {row.uuid: row for row in session.scalars(select(GPURow))}
            for uuid, gpu in gpus.items():
                row = gpu_rows.get(uuid)
                if row is None:
                    row = gpu_rows[uuid] = GPURow(uuid=uuid)
                    session.add(row)
                    added.append(uuid)
                elif not row.present:
                    added.append(uuid)
                row.update_from(gpu)
            for uuid, row in gpu_rows.items():
                if uuid not in gpus and row.present:
                    row.present = False
                    removed.append(uuid)
            session.flush()

            absent = sorted(uuid for uuid, row in gpu_rows.items() if not row.present)
            stranded = sorted(
                set(
                    session.scalars(
                        select(LeaseShareRow.lease_id)
                        .join(LeaseRow)
                        .where(LeaseRow.released_at.is_(None), LeaseShareRow.gpu_uuid.in_(absent))
                    )
                )
            )
            if removed:
                log.warning("GPUs gone from the inventory: %s", ", ".join(removed))
            if stranded:
                log.warning("live leases on absent GPUs (kept): %s", ", ".join(stranded))
            return InventorySync(tuple(sorted(added)), tuple(sorted(removed)), tuple(absent), tuple(stranded))

        self._nodes = None
        try:
            return self._write(work)
        finally:
            self._inventory_syncs += 1
            self._nodes = None  # read again, after the sync's commit

    def nodes(self) -> list[Node]:
        """The present nodes with their present GPUs, as the last sync left them.

        Read once and then kept: every job submission checks its gang against the largest node,
        and the inventory changes only through :meth:`sync_inventory`, which the one service
        owning the ledger calls (at its start, and whenever a cluster it follows changes its
        nodes) and which forgets the copy. Grants do not use it:
        they read the nodes inside their locked transaction.
        """
        nodes = self._nodes
        if nodes is None:
            syncs = self._inventory_syncs
            nodes = tuple(self._read(_present_nodes))
            if syncs == self._inventory_syncs:
                # Kept only if no sync ended while it was read (a service following a cluster
                # syncs while the API reads): a read from before that sync would be kept for ever.
                self._nodes = nodes
        return list(nodes)

    # ---------------------------------------------------------------------------- allocation

    def allocate(
        self,
        lease_id: str,
        holder: str,
        user: str,
        group: str | None,
        workload: WorkloadClass | str,
        slice_request: SliceRequest,
        quota_policy: QuotaPolicy,
        *,
        policy_name: str = "default",
        preemptible: bool = False,
        now: float | None = None,
    ) -> AllocationResult:
        """Grant ``slice_request`` to ``holder`` under ``lease_id``, or say why not.

        Idempotent by ``lease_id``: if a live lease with that id exists it is returned unchanged
        (``existing=True``), so a caller that crashed after asking can simply ask again. The same
        id with a different request, or the id of a released lease, raises
        :class:`LeaseConflictError`. Otherwise the quota is checked against the live leases, then
        the placement policy picks GPUs among what is free; a refusal or a lack of capacity comes
        back as a value, and nothing is written.
        """
        _check_lease_id(lease_id)
        ask = _Ask(lease_id, holder, user, group, WorkloadClass(workload), slice_request, preemptible)
        get_policy(policy_name)  # an unknown name fails here, before any transaction

        def choose(cluster: ClusterState, live: Sequence[Lease]) -> Placement | str:
            policy = get_policy(policy_name, self.workload_mix or _mix_of(live, slice_request))
            placement = policy.place(cluster, slice_request)
            if placement is None:
                return cluster.explain_no_fit(slice_request)
            # Applying it checks it against the capacity once more: a policy bug must not
            # turn into an overcommitted GPU.
            cluster.allocate(placement)
            return placement

        refuse = functools.partial(quota.check, quota_policy)
        return self._write(lambda session: self._grant(session, ask, refuse, choose, policy_name, now))

    def grant(
        self,
        lease_id: str,
        holder: str,
        user: str,
        group: str | None,
        workload: WorkloadClass | str,
        slice_request: SliceRequest,
        placement: Placement,
        quota_policy: QuotaPolicy,
        *,
        preemptible: bool = False,
        now: float | None = None,
        expected_gpu_hours: float = 0.0,
    ) -> AllocationResult:
        """Grant ``slice_request`` to ``holder`` on exactly ``placement``, or say why not.

        The batch scheduler decides where its jobs go (gangs, backfill, borrowed dev GPUs), so
        here the ledger does not ask a placement policy: it checks that the chosen placement still
        fits the free capacity of the live leases, under the allocator lock, and records it. The
        scheduler decided on a snapshot, so a placement that no longer fits (another grant came
        first, a GPU left the inventory) is an ordinary outcome: ``no_capacity`` with a sentence,
        and nothing written. Quota, idempotency by ``lease_id`` and conflicts are as in
        :meth:`allocate`; a batch grant is checked with ``quota.check_batch_start``, given
        ``expected_gpu_hours`` (what the job may spend: GPUs times its time limit) when known.

        On a retry under the id of a live lease the lease comes back as it was granted
        (``existing=True``), even if the scheduler has since chosen another placement: the
        lease's own placement is where the job's GPUs are, so callers read it from the result.

        A placement that does not match the request (share count, milli-GPU or memory per GPU,
        CPU or memory, a GPU of a model or pool the request excludes) is a bug in the caller and
        raises ``ValueError``.
        """
        _check_lease_id(lease_id)
        workload = WorkloadClass(workload)
        ask = _Ask(lease_id, holder, user, group, workload, slice_request, preemptible)
        _check_placement_shape(slice_request, placement)

        def choose(cluster: ClusterState, live: Sequence[Lease]) -> Placement | str:
            _check_placement_gpus(cluster, slice_request, placement)
            try:
                cluster.allocate(placement)
            except CapacityError as error:
                return (
                    f"the placement chosen for lease {lease_id} on node {placement.node} no longer "
                    f"fits the free capacity ({error}); the scheduler will choose again"
                )
            return placement

        def refuse(
            usage: Usage, user: str, group: str | None, workload: WorkloadClass, request: SliceRequest
        ) -> Refusal | None:
            if workload is WorkloadClass.batch:
                return quota.check_batch_start(
                    quota_policy, usage, user, group, request, expected_gpu_hours=expected_gpu_hours
                )
            return quota.check(quota_policy, usage, user, group, workload, request)

        return self._write(
            lambda session: self._grant(session, ask, refuse, choose, EXACT_PLACEMENT_POLICY, now)
        )

    def _grant(
        self,
        session: Session,
        ask: _Ask,
        refuse: Callable[[Usage, str, str | None, WorkloadClass, SliceRequest], Refusal | None],
        choose: Callable[[ClusterState, Sequence[Lease]], Placement | str],
        policy_name: str,
        now: float | None,
    ) -> AllocationResult:
        """The one grant transaction of :meth:`allocate` and :meth:`grant`, under the lock.

        A retry returns the lease it already holds; otherwise ``refuse`` checks the quota against
        the live leases and ``choose`` returns a placement it has applied to the free capacity,
        or a sentence saying why there is none. Only a granted lease is written.
        """
        granted_at = self._now(now)
        row = session.get(LeaseRow, ask.lease_id)
        if row is not None:
            _check_retry(row, ask.holder, ask.user, ask.group, ask.workload, ask.request, ask.preemptible)
            return AllocationResult(lease=row.to_lease(), existing=True)

        live = _live_leases(session)
        usage = _usage(session, live, granted_at)
        refusal = refuse(usage, ask.user, ask.group, ask.workload, ask.request)
        if refusal is not None:
            return AllocationResult(refusal=refusal)

        chosen = choose(_cluster_state(session, live), live)
        if isinstance(chosen, str):
            return AllocationResult(no_capacity=chosen)
        lease = Lease(
            id=ask.lease_id,
            holder=ask.holder,
            user=ask.user,
            group=ask.group,
            workload=ask.workload,
            request=ask.request,
            placement=chosen,
            created_at=granted_at,
            preemptible=ask.preemptible,
        )
        session.add(LeaseRow.from_lease(lease, policy_name))
        return AllocationResult(lease=lease)

    def release(self, lease_id: str, *, now: float | None = None) -> Lease | None:
        """End a lease and charge its GPU-seconds to its user and group.

        Idempotent: releasing a released lease returns it again and charges nothing more; an
        unknown id returns ``None``.
        """

        def work(session: Session) -> Lease | None:
            row = session.get(LeaseRow, lease_id)
            if row is None:
                return None
            lease = row.to_lease()
            if row.released_at is None:
                released_at = max(self.clock() if now is None else now, row.created_at)
                row.released_at = released_at
                _account(session, lease, released_at)
            return lease

        return self._write(work)

    # --------------------------------------------------------------------------------- reads

    def get(self, lease_id: str) -> Lease | None:
        """The lease granted under ``lease_id``, live or released; ``None`` if there is none."""
        record = self.record(lease_id)
        return record.lease if record else None

    def record(self, lease_id: str) -> LeaseRecord | None:
        """The lease with when it was released, for callers that must tell live from ended."""

        def work(session: Session) -> LeaseRecord | None:
            row = session.get(LeaseRow, lease_id)
            if row is None:
                return None
            return LeaseRecord(row.to_lease(), row.released_at, row.policy_name)

        return self._read(work)

    def list_leases(self, user: str | None = None, live_only: bool = True) -> list[Lease]:
        """Leases in the order they were granted, of one user or of everyone."""

        def work(session: Session) -> list[Lease]:
            query = select(LeaseRow).order_by(LeaseRow.created_at, LeaseRow.id)
            if user is not None:
                query = query.where(LeaseRow.user == user)
            if live_only:
                query = query.where(LeaseRow.released_at.is_(None))
            return [row.to_lease() for row in session.scalars(query)]

        return self._read(work)

    def usage(self, now: float | None = None) -> Usage:
        """What every user and group holds now, and the batch GPU-hours of the current week."""
        return self._read(lambda session: _usage(session, _live_leases(session), self._now(now)))

    def gpu_holders(self) -> dict[str, list[GPUHolder]]:
        """Every present GPU (and absent GPU still leased) with the live leases on it."""

        def work(session: Session) -> dict[str, list[GPUHolder]]:
            holders: dict[str, list[GPUHolder]] = {
                uuid: [] for uuid in session.scalars(select(GPURow.uuid).where(GPURow.present))
            }
            shares = session.execute(
                select(
                    LeaseShareRow.gpu_uuid,
                    LeaseRow.id,
                    LeaseRow.holder,
                    LeaseRow.user,
                    LeaseShareRow.milli_gpu,
                )
                .join(LeaseRow)
                .where(LeaseRow.released_at.is_(None))
                .order_by(LeaseShareRow.gpu_uuid, LeaseRow.created_at, LeaseRow.id)
            )
            for gpu_uuid, lease_id, holder, user, milli_gpu in shares:
                holders.setdefault(gpu_uuid, []).append(GPUHolder(lease_id, holder, user, milli_gpu))
            return holders

        return self._read(work)

    # ----------------------------------------------------------------------- fair share

    def fair_share_usage(self) -> tuple[dict[str | None, float], float | None]:
        """Every group's decayed GPU-seconds as last saved, and when they were last decayed
        (``None`` when nothing was ever saved); the group ``None`` is the jobs of no group."""

        def work(session: Session) -> tuple[dict[str | None, float], float | None]:
            rows = list(session.scalars(select(FairShareUsageRow)))
            usage = {(row.group or None): row.gpu_seconds for row in rows}
            return usage, max((row.updated_at for row in rows), default=None)

        return self._read(work)

    def save_fair_share_usage(self, usage: Mapping[str | None, float], updated_at: float) -> None:
        """Write each group's decayed GPU-seconds: one row per group, inserted or updated."""
        if not usage:
            return

        def work(session: Session) -> None:
            rows = {row.group: row for row in session.scalars(select(FairShareUsageRow))}
            for group, gpu_seconds in usage.items():
                key = group or ""
                row = rows.get(key)
                if row is None:
                    session.add(FairShareUsageRow(group=key, gpu_seconds=gpu_seconds, updated_at=updated_at))
                else:
                    row.gpu_seconds, row.updated_at = gpu_seconds, updated_at

        self._write(work)

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else now


# ------------------------------------------------------------------------------- helpers


class _Ask(NamedTuple):
    """Who asks for what under which lease id: what a retry must repeat exactly."""

    lease_id: str
    holder: str
    user: str
    group: str | None
    workload: WorkloadClass
    request: SliceRequest
    preemptible: bool


def _check_lease_id(lease_id: str) -> None:
    if not lease_id or len(lease_id) > MAX_LEASE_ID_LENGTH:
        raise ValueError(f"a lease id must be 1 to {MAX_LEASE_ID_LENGTH} characters, got {lease_id!r}")


def _check_placement_shape(slice_request: SliceRequest, placement: Placement) -> None:
    """Refuse a placement that is not one of ``slice_request``, whatever the free capacity."""
    problems = []
    if len(placement.shares) != slice_request.gpu_count:
        problems.append(f"{len(placement.shares)} GPU shares for {slice_request.gpu_count} GPUs")
    if len(set(placement.gpu_uuids)) != len(placement.shares):
        problems.append("a GPU listed twice")
    wrong_milli = [s.gpu_uuid for s in placement.shares if s.milli_gpu != slice_request.per_gpu_milli]
    if wrong_milli:
        problems.append(f"not {slice_request.per_gpu_milli} milli-GPU on {', '.join(wrong_milli)}")
    if (placement.cpu_milli, placement.memory_mib) != (slice_request.cpu_milli, slice_request.memory_mib):
        problems.append(
            f"{placement.cpu_milli} milli-CPU and {placement.memory_mib} MiB for a request of "
            f"{slice_request.cpu_milli} milli-CPU and {slice_request.memory_mib} MiB"
        )
    _raise_mismatch(placement, problems)


def _raise_mismatch(placement: Placement, problems: Sequence[str]) -> None:
    if problems:
        raise ValueError(
            f"the placement on node {placement.node} does not match the request: {'; '.join(problems)}"
        )


def _check_placement_gpus(cluster: ClusterState, slice_request: SliceRequest, placement: Placement) -> None:
    """Refuse GPUs the request excludes or GPU memory that does not follow it.

    GPUs the cluster does not know (gone from the inventory) are left to the capacity check,
    which turns them into a ``no_capacity`` sentence.
    """
    gpus = gpus_by_uuid(cluster.nodes)
    problems = []
    for share in placement.shares:
        gpu = gpus.get(share.gpu_uuid)
        if gpu is None:
            continue
        if not slice_request.allows(gpu):
            problems.append(f"GPU {gpu.uuid} ({gpu.model}, pools {sorted(gpu.pools)}) is not allowed")
        elif share.memory_mib != slice_request.gpu_memory_on(gpu):
            problems.append(
                f"{share.memory_mib} MiB on GPU {gpu.uuid} instead of {slice_request.gpu_memory_on(gpu)}"
            )
    _raise_mismatch(placement, problems)


def _check_retry(
    row: LeaseRow,
    holder: str,
    user: str,
    group: str | None,
    workload: WorkloadClass,
    slice_request: SliceRequest,
    preemptible: bool,
) -> None:
    """Refuse to treat a different request as a retry of the one granted under this id."""
    if row.released_at is not None:
        raise LeaseConflictError(
            f"lease {row.id} was already granted and released; a lease id names one grant, "
            "so ask again under a new id"
        )
    granted = {
        "holder": row.holder,
        "user": row.user,
        "group": row.group,
        "workload": WorkloadClass(row.workload),
        "request": row.to_request(),
        "preemptible": row.preemptible,
    }
    asked = {
        "holder": holder,
        "user": user,
        "group": group,
        "workload": workload,
        "request": slice_request,
        "preemptible": preemptible,
    }
    differing = [name for name in granted if granted[name] != asked[name]]
    if differing:
        details = "; ".join(f"{name}: granted {granted[name]!r}, asked {asked[name]!r}" for name in differing)
        raise LeaseConflictError(
            f"lease {row.id} is already held for a different request ({details}); a retry must "
            "repeat the same request, and a new request needs a new lease id"
        )


def _live_leases(session: Session) -> list[Lease]:
    rows = session.scalars(
        select(LeaseRow).where(LeaseRow.released_at.is_(None)).order_by(LeaseRow.created_at, LeaseRow.id)
    )
    return [row.to_lease() for row in rows]


def _mix_of(live: Iterable[Lease], slice_request: SliceRequest) -> list[tuple[SliceRequest, float]]:
    counts = Counter(lease.request for lease in live)
    counts[slice_request] += 1
    return [(request, float(count)) for request, count in counts.items()]


def _present_nodes(session: Session) -> list[Node]:
    gpus_of: dict[str, list[GPURow]] = defaultdict(list)
    for gpu in session.scalars(select(GPURow).where(GPURow.present).order_by(GPURow.node, GPURow.index)):
        gpus_of[gpu.node].append(gpu)
    node_rows = session.scalars(select(NodeRow).where(NodeRow.present).order_by(NodeRow.name))
    return [node_from_rows(row, gpus_of[row.name]) for row in node_rows]


def _cluster_state(session: Session, live: Iterable[Lease]) -> ClusterState:
    """The free capacity: present GPUs minus the shares of live leases on them.

    A node whose live leases already exceed what it has (its inventory shrank under them) is
    left out altogether, so that nothing more is placed there until those leases end.
    """
    nodes = _present_nodes(session)
    gpu_node = {gpu.uuid: node.name for node in nodes for gpu in node.gpus}
    node_names = {node.name for node in nodes}
    placements = []
    for lease in live:
        if lease.placement.node not in node_names:
            continue
        shares = tuple(s for s in lease.placement.shares if gpu_node.get(s.gpu_uuid) == lease.placement.node)
        placements.append(replace(lease.placement, shares=shares))
    overcommitted = _overcommitted_nodes(nodes, placements)
    if overcommitted:
        log.warning("nodes with more leased than they have, left out of placement: %s", overcommitted)
    cluster = ClusterState([node for node in nodes if node.name not in overcommitted])
    for placement in placements:
        if placement.node not in overcommitted:
            cluster.allocate(placement)
    return cluster


def _overcommitted_nodes(nodes: Sequence[Node], placements: Iterable[Placement]) -> list[str]:
    milli: dict[str, int] = defaultdict(int)
    gpu_memory: dict[str, int] = defaultdict(int)
    cpu: dict[str, int] = defaultdict(int)
    memory: dict[str, int] = defaultdict(int)
    for placement in placements:
        cpu[placement.node] += placement.cpu_milli
        memory[placement.node] += placement.memory_mib
        for share in placement.shares:
            milli[share.gpu_uuid] += share.milli_gpu
            gpu_memory[share.gpu_uuid] += share.memory_mib
    return [
        node.name
        for node in nodes
        if cpu[node.name] > node.cpu_milli
        or memory[node.name] > node.memory_mib
        or any(milli[gpu.uuid] > MILLI_PER_GPU or gpu_memory[gpu.uuid] > gpu.memory_mib for gpu in node.gpus)
    ]


def _usage(session: Session, live: Sequence[Lease], now: float) -> Usage:
    """Usage of the live leases, with batch GPU-hours of this week: accounted plus running."""
    week = quota.week_start(now)
    hours: dict[tuple[str, str], float] = defaultdict(float)
    accounted = session.scalars(
        select(GPUUsageRow).where(
            GPUUsageRow.workload == WorkloadClass.batch.value, GPUUsageRow.week_start == week
        )
    )
    for row in accounted:
        hours[row.holder_kind, row.holder] += row.gpu_seconds / 3600
    for lease in live:
        if lease.workload is WorkloadClass.batch:
            seconds = max(0.0, now - max(lease.created_at, week))
            for kind, holder in _charged(lease):
                hours[kind, holder] += lease.total_milli / MILLI_PER_GPU * seconds / 3600
    return Usage.from_leases(
        live,
        user_batch_gpu_hours={holder: value for (kind, holder), value in hours.items() if kind == "user"},
        group_batch_gpu_hours={holder: value for (kind, holder), value in hours.items() if kind == "group"},
    )


def _charged(lease: Lease) -> list[tuple[str, str]]:
    charged = [(quota.HolderKind.user.value, lease.user)]
    if lease.group is not None:
        charged.append((quota.HolderKind.group.value, lease.group))
    return charged


def _account(session: Session, lease: Lease, released_at: float) -> None:
    """Add the lease's GPU-seconds, week by week, to its user's and group's accounts."""
    gpus = lease.total_milli / MILLI_PER_GPU
    if not gpus:
        return
    for week, seconds in quota.split_by_week(lease.created_at, released_at):
        for kind, holder in _charged(lease):
            key = (kind, holder, lease.workload.value, week)
            row = session.get(GPUUsageRow, key)
            if row is None:
                row = GPUUsageRow(
                    holder_kind=kind,
                    holder=holder,
                    workload=lease.workload.value,
                    week_start=week,
                    gpu_seconds=0.0,
                )
                session.add(row)
            row.gpu_seconds += gpus * seconds
