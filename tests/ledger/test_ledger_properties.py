"""Hypothesis drives the ledger through random grants, retries, releases and clock moves.

After every step the ledger must agree with a plain model kept beside it, hold no GPU beyond its
milli-GPU or memory, hold no user or group beyond its quota, and refuse for lack of capacity only
when a brute-force search confirms that nothing fits.
"""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from spawner.core.quota import BatchLimits, InteractiveLimits, Limits, QuotaPolicy, Usage, check
from spawner.core.units import GPU, Lease, Node, SliceRequest, WorkloadClass
from spawner.ledger import LeaseConflictError, Ledger

USERS = ["alice", "bob", "carol"]
GROUPS = [None, "vision", "nlp"]
POLICY = QuotaPolicy(
    users={"alice": Limits(InteractiveLimits(max_servers=3, max_milli_gpu=1500))},
    groups={
        "vision": Limits(
            InteractiveLimits(max_milli_gpu=2000), BatchLimits(guaranteed_gpus=1, borrowing_limit_gpus=1)
        ),
        "nlp": Limits(batch=BatchLimits(max_running_jobs=1)),
    },
    default_user=Limits(InteractiveLimits(max_servers=4), BatchLimits(max_running_jobs=2)),
)


def inventory() -> list[Node]:
    """Few, unequal GPUs so that both quota and capacity run out within a short run."""
    return [
        Node(
            "small",
            8000,
            32768,
            gpus=(GPU("s0", "small", 0, "T4", 16384), GPU("s1", "small", 1, "T4", 16384)),
        ),
        Node(
            "big",
            16000,
            65536,
            gpus=(
                GPU("b0", "big", 0, "A100", 40960, pools=frozenset({"dev", "train"})),
                GPU("b1", "big", 1, "A100", 40960, pools=frozenset({"train"})),
            ),
        ),
    ]


requests = st.one_of(
    st.builds(
        SliceRequest,
        milli_gpu=st.sampled_from([100, 125, 250, 333, 500, 750]),
        gpu_memory_mib=st.none() | st.sampled_from([2000, 9000]),
        cpu_milli=st.sampled_from([0, 1000, 4000]),
        memory_mib=st.sampled_from([0, 8192]),
        gpu_models=st.sampled_from([frozenset(), frozenset({"A100"})]),
        pool=st.sampled_from([None, "dev"]),
    ),
    st.builds(SliceRequest, gpus=st.integers(1, 2), pool=st.sampled_from([None, "train"])),
    st.builds(SliceRequest, cpu_milli=st.sampled_from([500, 2000])),
)


def fits_anywhere(nodes: list[Node], live: list[Lease], request: SliceRequest) -> bool:
    """Brute force: could ``request`` go anywhere, given the live leases?"""
    milli = {gpu.uuid: 1000 for node in nodes for gpu in node.gpus}
    memory = {gpu.uuid: gpu.memory_mib for node in nodes for gpu in node.gpus}
    cpu = {node.name: node.cpu_milli for node in nodes}
    host_memory = {node.name: node.memory_mib for node in nodes}
    for lease in live:
        cpu[lease.placement.node] -= lease.placement.cpu_milli
        host_memory[lease.placement.node] -= lease.placement.memory_mib
        for share in lease.placement.shares:
            milli[share.gpu_uuid] -= share.milli_gpu
            memory[share.gpu_uuid] -= share.memory_mib
    for node in nodes:
        if cpu[node.name] < request.cpu_milli or host_memory[node.name] < request.memory_mib:
            continue
        usable = [
            gpu
            for gpu in node.gpus
            if request.allows(gpu)
            and milli[gpu.uuid] >= request.per_gpu_milli
            and memory[gpu.uuid] >= request.gpu_memory_on(gpu)
            and (request.is_fractional or milli[gpu.uuid] == 1000)
        ]
        if len(usable) >= request.gpu_count:
            return True
    return False


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self, directory: Path):
        super().__init__()
        self.now = 1_715_594_400.0
        self.nodes = inventory()
        self.ledger = Ledger(f"sqlite:///{directory / 'ledger.sqlite'}", clock=lambda: self.now)
        self.ledger.create_schema()
        self.ledger.sync_inventory(self.nodes)
        self.live: dict[str, Lease] = {}
        self.released: dict[str, Lease] = {}
        self.ids = (f"lease-{number}" for number in itertools.count())

    def teardown(self) -> None:
        self.ledger.close()

    def model_usage(self) -> Usage:
        return Usage.from_leases(self.live.values())

    @rule(
        user=st.sampled_from(USERS),
        group=st.sampled_from(GROUPS),
        workload=st.sampled_from(list(WorkloadClass)),
        request=requests,
        policy_name=st.sampled_from(["default", "best-fit", "spread"]),
    )
    def allocate(self, user, group, workload, request, policy_name):
        lease_id = next(self.ids)
        expected_refusal = check(POLICY, self.model_usage(), user, group, workload, request)
        could_fit = fits_anywhere(self.nodes, list(self.live.values()), request)
        result = self.ledger.allocate(
            lease_id, f"holder-{lease_id}", user, group, workload, request, POLICY, policy_name=policy_name
        )
        assert not result.existing
        assert result.refusal == expected_refusal
        if expected_refusal is not None:
            return
        assert result.granted == could_fit, result.no_capacity
        if result.granted:
            lease = result.lease
            assert (lease.user, lease.group, lease.request, lease.created_at) == (
                user,
                group,
                request,
                self.now,
            )
            self.live[lease_id] = lease

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def retry_allocate(self, data):
        lease = self.live[data.draw(st.sampled_from(sorted(self.live)))]
        result = self.ledger.allocate(
            lease.id, lease.holder, lease.user, lease.group, lease.workload, lease.request, POLICY
        )
        assert result.existing and result.lease == lease

    @precondition(lambda self: self.live)
    @rule(data=st.data(), other=requests)
    def retry_with_another_request(self, data, other):
        lease = self.live[data.draw(st.sampled_from(sorted(self.live)))]
        if other == lease.request:
            return
        with pytest.raises(LeaseConflictError):
            self.ledger.allocate(
                lease.id, lease.holder, lease.user, lease.group, lease.workload, other, POLICY
            )

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def release(self, data):
        lease_id = data.draw(st.sampled_from(sorted(self.live)))
        assert self.ledger.release(lease_id) == self.live[lease_id]
        self.released[lease_id] = self.live.pop(lease_id)

    @precondition(lambda self: self.released)
    @rule(data=st.data())
    def release_again(self, data):
        lease_id = data.draw(st.sampled_from(sorted(self.released)))
        assert self.ledger.release(lease_id) == self.released[lease_id]

    @rule(request=requests, user=st.sampled_from(USERS))
    def grant_and_release_restores_capacity(self, request, user):
        before = self.ledger.gpu_holders()
        lease_id = next(self.ids)
        result = self.ledger.allocate(lease_id, "probe", user, None, "batch", request, QuotaPolicy())
        if result.granted:
            self.ledger.release(lease_id)
        assert self.ledger.gpu_holders() == before

    @rule(seconds=st.floats(1, 3 * 24 * 3600))
    def advance_clock(self, seconds):
        self.now += seconds

    @invariant()
    def ledger_matches_the_model(self):
        assert {lease.id: lease for lease in self.ledger.list_leases()} == self.live

    @invariant()
    def no_gpu_over_capacity(self):
        capacity = {gpu.uuid: gpu for node in self.nodes for gpu in node.gpus}
        for holders in self.ledger.gpu_holders().values():
            assert sum(holder.milli_gpu for holder in holders) <= 1000
        memory: dict[str, int] = {}
        for lease in self.ledger.list_leases():
            for share in lease.placement.shares:
                memory[share.gpu_uuid] = memory.get(share.gpu_uuid, 0) + share.memory_mib
        for gpu_uuid, used in memory.items():
            assert used <= capacity[gpu_uuid].memory_mib

    @invariant()
    def nobody_over_quota(self):
        usage = self.ledger.usage()
        for name, held in usage.users.items():
            assert within(POLICY.for_user(name), held), name
        for name, held in usage.groups.items():
            assert within(POLICY.for_group(name), held), name


def within(limits: Limits, held) -> bool:
    def ok(value, limit):
        return limit is None or value <= limit

    max_gpus = limits.batch.max_gpus
    return (
        ok(held.servers, limits.interactive.max_servers)
        and ok(held.interactive_milli, limits.interactive.max_milli_gpu)
        and ok(held.batch_jobs, limits.batch.max_running_jobs)
        and ok(held.batch_milli, None if max_gpus is None else max_gpus * 1000)
    )


def test_ledger_state_machine():
    with contextlib.ExitStack() as stack:

        def fresh_machine() -> LedgerMachine:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ledger-machine-")))
            return LedgerMachine(directory)

        run_state_machine_as_test(
            fresh_machine,
            settings=settings(
                max_examples=40,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
