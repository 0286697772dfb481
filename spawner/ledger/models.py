"""The ledger's tables, and how their rows turn into the shared units and back.

Rows are never handed out of the ledger: callers get ``core.units`` values, so nothing outside
this package depends on a session being open or an attribute being loaded.

Nodes and GPUs are never deleted, only marked absent, because a lease may still point at a GPU
that vanished from the inventory (a node rebooting, a card falling off the bus); the lease stays
and is reported until its holder releases it. Times are Unix seconds as floats, as in
``core.units.Lease``.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ..core.units import GPU, GPUShare, Lease, Node, Placement, SliceRequest, WorkloadClass

NAME = String(255)


class Base(DeclarativeBase):
    type_annotation_map = {int: BigInteger, str: NAME, float: Float(precision=53)}


class NodeRow(Base):
    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(primary_key=True)
    cpu_milli: Mapped[int]
    memory_mib: Mapped[int]
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    present: Mapped[bool] = mapped_column(default=True)


class GPURow(Base):
    __tablename__ = "gpus"

    uuid: Mapped[str] = mapped_column(primary_key=True)
    node: Mapped[str] = mapped_column(ForeignKey("nodes.name"), index=True)
    index: Mapped[int]
    model: Mapped[str]
    memory_mib: Mapped[int]
    pools: Mapped[list[str]] = mapped_column(JSON)
    mig_capable: Mapped[bool]
    simulated: Mapped[bool]
    present: Mapped[bool] = mapped_column(default=True)

    def to_gpu(self) -> GPU:
        return GPU(
            uuid=self.uuid,
            node=self.node,
            index=self.index,
            model=self.model,
            memory_mib=self.memory_mib,
            pools=frozenset(self.pools),
            mig_capable=self.mig_capable,
            simulated=self.simulated,
        )

    def update_from(self, gpu: GPU) -> None:
        self.node = gpu.node
        self.index = gpu.index
        self.model = gpu.model
        self.memory_mib = gpu.memory_mib
        self.pools = sorted(gpu.pools)
        self.mig_capable = gpu.mig_capable
        self.simulated = gpu.simulated
        self.present = True


class LeaseRow(Base):
    """One grant. Its primary key is the caller's idempotency key, so a retry finds it."""

    __tablename__ = "leases"

    id: Mapped[str] = mapped_column(primary_key=True)
    holder: Mapped[str]
    user: Mapped[str] = mapped_column("user_name", index=True)
    group: Mapped[str | None] = mapped_column("group_name", index=True)
    workload: Mapped[str] = mapped_column(String(16))
    policy_name: Mapped[str] = mapped_column(String(64))
    preemptible: Mapped[bool]
    # The request, kept whole so that a retry under the same id can be compared with it.
    milli_gpu: Mapped[int]
    gpus: Mapped[int]
    gpu_memory_mib: Mapped[int | None]
    request_cpu_milli: Mapped[int]
    request_memory_mib: Mapped[int]
    gpu_models: Mapped[list[str]] = mapped_column(JSON)
    pool: Mapped[str | None]
    # Where it went.
    node: Mapped[str] = mapped_column(ForeignKey("nodes.name"))
    cpu_milli: Mapped[int]
    memory_mib: Mapped[int]
    created_at: Mapped[float]
    released_at: Mapped[float | None]

    shares: Mapped[list[LeaseShareRow]] = relationship(
        order_by="LeaseShareRow.position", cascade="all, delete-orphan", lazy="selectin"
    )

    __table_args__ = (Index("ix_leases_live", "released_at"),)

    @classmethod
    def from_lease(cls, lease: Lease, policy_name: str) -> LeaseRow:
        request, placement = lease.request, lease.placement
        return cls(
            id=lease.id,
            holder=lease.holder,
            user=lease.user,
            group=lease.group,
            workload=lease.workload.value,
            policy_name=policy_name,
            preemptible=lease.preemptible,
            milli_gpu=request.milli_gpu,
            gpus=request.gpus,
            gpu_memory_mib=request.gpu_memory_mib,
            request_cpu_milli=request.cpu_milli,
            request_memory_mib=request.memory_mib,
            gpu_models=sorted(request.gpu_models),
            pool=request.pool,
            node=placement.node,
            cpu_milli=placement.cpu_milli,
            memory_mib=placement.memory_mib,
            created_at=lease.created_at,
            released_at=None,
            shares=[
                LeaseShareRow(
                    position=position,
                    gpu_uuid=share.gpu_uuid,
                    milli_gpu=share.milli_gpu,
                    memory_mib=share.memory_mib,
                )
                for position, share in enumerate(placement.shares)
            ],
        )

    def to_request(self) -> SliceRequest:
        return SliceRequest(
            milli_gpu=self.milli_gpu,
            gpus=self.gpus,
            gpu_memory_mib=self.gpu_memory_mib,
            cpu_milli=self.request_cpu_milli,
            memory_mib=self.request_memory_mib,
            gpu_models=frozenset(self.gpu_models),
            pool=self.pool,
        )

    def to_placement(self) -> Placement:
        return Placement(
            node=self.node,
            shares=tuple(
                GPUShare(gpu_uuid=share.gpu_uuid, milli_gpu=share.milli_gpu, memory_mib=share.memory_mib)
                for share in self.shares
            ),
            cpu_milli=self.cpu_milli,
            memory_mib=self.memory_mib,
        )

    def to_lease(self) -> Lease:
        return Lease(
            id=self.id,
            holder=self.holder,
            user=self.user,
            group=self.group,
            workload=WorkloadClass(self.workload),
            request=self.to_request(),
            placement=self.to_placement(),
            created_at=self.created_at,
            preemptible=self.preemptible,
        )


class LeaseShareRow(Base):
    __tablename__ = "lease_shares"

    lease_id: Mapped[str] = mapped_column(ForeignKey("leases.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(primary_key=True)
    gpu_uuid: Mapped[str] = mapped_column(ForeignKey("gpus.uuid"), index=True)
    milli_gpu: Mapped[int]
    memory_mib: Mapped[int]


class GPUUsageRow(Base):
    """GPU-seconds spent by one user or group on one workload class in one accounting week.

    Kept apart from the leases so that weekly budgets stay cheap to read (one row per holder and
    week, however many leases) and survive pruning of old leases.
    """

    __tablename__ = "gpu_usage"

    holder_kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    holder: Mapped[str] = mapped_column(primary_key=True)
    workload: Mapped[str] = mapped_column(String(16), primary_key=True)
    week_start: Mapped[int] = mapped_column(primary_key=True)
    gpu_seconds: Mapped[float]


class FairShareUsageRow(Base):
    """One group's decayed GPU-seconds, the figure fair share orders the batch queue by.

    The batch scheduler keeps it in memory and writes it back after each pass, so that a restart
    of the service does not hand every group a clean slate. ``group_name`` is ``""`` for jobs
    charged to no group; ``updated_at`` is when the figure was last decayed, so that the next
    service decays it over the time it was down too.
    """

    __tablename__ = "fair_share_usage"

    group: Mapped[str] = mapped_column("group_name", primary_key=True)
    gpu_seconds: Mapped[float]
    updated_at: Mapped[float]


class GPUHourUsageRow(Base):
    """One GPU's figures for one hour (UTC): how long it was sampled, busy, and how much it did.

    The usage rollup (:mod:`spawner.ledger.usage_rollup`) adds to these as the monitor samples;
    one row per card and hour, pruned after the retention period, keeps the table bounded.
    ``measured`` is False for simulated GPUs, whose figures are their allocation.
    """

    __tablename__ = "gpu_hour_usage"

    gpu_uuid: Mapped[str] = mapped_column(primary_key=True)
    hour_start: Mapped[int] = mapped_column(primary_key=True, index=True)
    node: Mapped[str]
    gpu_index: Mapped[int]
    pools: Mapped[str]
    sampled_seconds: Mapped[float]
    busy_seconds: Mapped[float]
    used_gpu_seconds: Mapped[float]
    measured: Mapped[bool]


class HolderDayUsageRow(Base):
    """One user's GPU-seconds in one group and workload class on one day (UTC): allocated (held by
    leases) and really used (measured on the cards). ``group_name`` is ``""`` for no group."""

    __tablename__ = "holder_day_usage"

    day_start: Mapped[int] = mapped_column(primary_key=True, index=True)
    user: Mapped[str] = mapped_column("user_name", primary_key=True)
    group: Mapped[str] = mapped_column("group_name", primary_key=True)
    workload: Mapped[str] = mapped_column(String(16), primary_key=True)
    allocated_gpu_seconds: Mapped[float]
    used_gpu_seconds: Mapped[float]
    measured: Mapped[bool]


class GPUNoticeRow(Base):
    """One notice of the GPU monitor to a user: a slice over its memory, a process stopped, a server
    stopped for holding an idle GPU. Kept so that a user reads why after a restart of the service
    too; deleted after the usage rollup's retention period."""

    __tablename__ = "gpu_notices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(index=True)
    user: Mapped[str] = mapped_column("user_name", index=True)
    lease_id: Mapped[str]
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)


def node_from_rows(node: NodeRow, gpus: list[GPURow]) -> Node:
    return Node(
        name=node.name,
        cpu_milli=node.cpu_milli,
        memory_mib=node.memory_mib,
        gpus=tuple(gpu.to_gpu() for gpu in gpus),
        labels=dict(node.labels),
    )


class JobRow(Base):
    """One batch job: what was submitted, where it is in its life, and where its current run is.

    The submission is kept whole (script, environment, provenance) so that the service can start
    the job again after a restart or a preemption without asking the notebook. Free text (the
    script, paths, reasons) is ``Text``: PostgreSQL enforces ``VARCHAR`` lengths.
    """

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(index=True)
    group: Mapped[str | None] = mapped_column("group_name")
    name: Mapped[str]
    payload_kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[str] = mapped_column(Text)
    workdir: Mapped[str] = mapped_column(Text)
    environment: Mapped[dict[str, str]] = mapped_column(JSON)
    image: Mapped[str | None] = mapped_column(Text)
    gpus: Mapped[int]
    gpu_models: Mapped[list[str]] = mapped_column(JSON)
    cpu_milli: Mapped[int]
    memory_mib: Mapped[int]
    priority: Mapped[str] = mapped_column(String(8))
    time_limit_s: Mapped[float]
    state: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[float]
    started_at: Mapped[float | None]
    ended_at: Mapped[float | None]
    exit_code: Mapped[int | None]
    reason: Mapped[str] = mapped_column(Text)
    lease_id: Mapped[str | None]
    node: Mapped[str | None]
    gpu_uuids: Mapped[list[str]] = mapped_column(JSON)
    pool: Mapped[str | None]
    borrowed: Mapped[bool]
    attempts: Mapped[int]
    provenance: Mapped[dict[str, object]] = mapped_column(JSON)

    __table_args__ = (
        # The scheduler's queue (state = queued, oldest first) and an admin's listing by state.
        Index("ix_jobs_state_created", "state", "created_at"),
        # A user's listing (GET jobs?state=queued, newest first) and the per-user limits counted at
        # every submission: the owner's jobs in one state, already in time order, without a sort
        # or a walk over everyone's queue.
        Index("ix_jobs_owner_state_created", "owner", "state", "created_at", "id"),
    )


class JobEventRow(Base):
    """One state transition of a job, numbered per job so that the order survives equal times.

    The number is the count of the job's earlier events, taken under the allocator lock, so it
    needs no database sequence and two writers cannot take the same one.
    """

    __tablename__ = "job_events"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[float]
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)


class JobSubmissionRow(Base):
    """How one job was submitted: by whom, under which idempotency key, and how big its payload was.

    A table of its own, not columns of ``jobs``: the ledger has no migrations (``create_schema``
    only creates missing tables), so a ledger written before this table existed gains it on the
    next start, and its older jobs simply have no row. Written in the transaction that queues the
    job, so a key never names a job that was not stored, nor a stored job two keys.

    ``idempotency_key`` is the client's (``Idempotency-Key`` of ``POST jobs``), unique per owner
    and NULL for a submission without one; ``body_sha256`` is the digest of the submission it
    named, so that the same key with a different body is refused rather than answered with the
    wrong job. ``payload_bytes`` is what the job's payload counts against its owner's storage
    limit (the script's UTF-8 bytes, a cell's decoded bytes), kept here so the limit is a sum
    over small rows rather than over the payloads themselves, and still known after the payload
    of a finished job was dropped.
    """

    __tablename__ = "job_submissions"

    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    owner: Mapped[str] = mapped_column(index=True)
    idempotency_key: Mapped[str | None]
    body_sha256: Mapped[str | None] = mapped_column(String(64))
    payload_bytes: Mapped[int]
    created_at: Mapped[float]

    __table_args__ = (UniqueConstraint("owner", "idempotency_key", name="uq_job_submissions_owner_key"),)
