"""Allocate and release on the ledger: idempotent by lease id, exact, quota-checked, durable."""

from __future__ import annotations

import contextlib
from collections import Counter

import pytest

from spawner.core.quota import BatchLimits, InteractiveLimits, Limits, QuotaPolicy, Refusal, Rule
from spawner.core.units import SliceRequest, WorkloadClass
from spawner.ledger import LeaseConflictError, Ledger

UNLIMITED = QuotaPolicy()
EIGHTH = SliceRequest(milli_gpu=125, pool="dev")


def free_capacity(ledger: Ledger) -> dict[str, tuple[int, int]]:
    """Free milli-GPU and GPU memory of every present GPU, from the ledger's own records."""
    capacity = {gpu.uuid: (1000, gpu.memory_mib) for node in ledger.nodes() for gpu in node.gpus}
    for lease in ledger.list_leases():
        for share in lease.placement.shares:
            milli, memory = capacity[share.gpu_uuid]
            capacity[share.gpu_uuid] = (milli - share.milli_gpu, memory - share.memory_mib)
    return capacity


def server(ledger: Ledger, lease_id: str, user: str = "alice", group: str | None = "vision", **kwargs):
    request = kwargs.pop("request", EIGHTH)
    policy = kwargs.pop("policy", UNLIMITED)
    return ledger.allocate(
        lease_id, f"server-{lease_id}", user, group, "interactive", request, policy, **kwargs
    )


def test_allocate_grants_a_slice_on_a_dev_gpu_with_memory_following_the_fraction(ledger):
    result = server(ledger, "lease-1")
    assert result.granted and not result.existing and result.reason is None
    lease = result.lease
    assert (lease.id, lease.holder, lease.user, lease.group) == (
        "lease-1",
        "server-lease-1",
        "alice",
        "vision",
    )
    assert lease.workload is WorkloadClass.interactive
    [share] = lease.placement.shares
    assert share.gpu_uuid.startswith("dev-") and share.milli_gpu == 125 and share.memory_mib == 2048
    assert ledger.get("lease-1") == lease
    assert ledger.gpu_holders()[share.gpu_uuid] == [("lease-1", "server-lease-1", "alice", 125)]


def test_allocate_is_idempotent_by_lease_id(ledger, clock):
    first = server(ledger, "lease-1")
    clock.advance(60)
    again = server(ledger, "lease-1")
    assert again.existing and again.lease == first.lease
    assert len(ledger.list_leases()) == 1
    assert sum(len(holders) for holders in ledger.gpu_holders().values()) == 1


def test_the_same_id_for_a_different_request_is_a_clear_error(ledger):
    server(ledger, "lease-1")
    with pytest.raises(LeaseConflictError, match="lease lease-1 is already held for a different request"):
        server(ledger, "lease-1", request=SliceRequest(milli_gpu=250, pool="dev"))
    with pytest.raises(LeaseConflictError, match="user: granted 'alice', asked 'bob'"):
        server(ledger, "lease-1", user="bob")


def test_a_released_id_cannot_be_granted_again(ledger):
    server(ledger, "lease-1")
    ledger.release("lease-1")
    with pytest.raises(LeaseConflictError, match="already granted and released"):
        server(ledger, "lease-1")
    assert ledger.list_leases() == []


def test_release_restores_capacity_exactly(ledger):
    server(ledger, "keep", request=SliceRequest(milli_gpu=300, pool="dev"))
    before = free_capacity(ledger)
    leases = [
        server(ledger, "a", request=SliceRequest(milli_gpu=125, gpu_memory_mib=5000, pool="dev")).lease,
        server(ledger, "b", request=SliceRequest(gpus=2, pool="dev", cpu_milli=4000, memory_mib=8192)).lease,
        ledger.allocate(
            "c", "job-c", "bob", None, "batch", SliceRequest(gpus=2, pool="train"), UNLIMITED
        ).lease,
    ]
    assert free_capacity(ledger) != before
    for lease in leases:
        assert ledger.release(lease.id) == lease
    assert free_capacity(ledger) == before
    assert [lease.id for lease in ledger.list_leases()] == ["keep"]


def test_release_is_idempotent_and_unknown_ids_return_none(ledger, clock):
    lease = server(ledger, "lease-1").lease
    clock.advance(10)
    assert ledger.release("lease-1") == lease
    clock.advance(10)
    assert ledger.release("lease-1") == lease
    assert ledger.record("lease-1").released_at == clock.now - 10
    assert ledger.release("never-granted") is None
    assert ledger.get("never-granted") is None


def test_host_cpu_and_memory_are_part_of_the_placement(ledger):
    request = SliceRequest(milli_gpu=125, pool="dev", cpu_milli=12000, memory_mib=1024)
    first = server(ledger, "one", request=request).lease
    second = server(ledger, "two", request=request).lease
    assert first.placement.cpu_milli == 12000 and first.placement.memory_mib == 1024
    # 16 CPUs per dev node: the second 12-CPU server cannot share a node with the first.
    assert first.placement.node != second.placement.node
    third = server(ledger, "three", request=request)
    assert not third.granted and third.no_capacity


def test_quota_refusal_is_a_value_and_nothing_is_written(ledger):
    policy = QuotaPolicy(users={"alice": Limits(InteractiveLimits(max_servers=2))})
    for lease_id in ("one", "two"):
        assert server(ledger, lease_id, policy=policy).granted
    result = server(ledger, "three", policy=policy)
    assert result.lease is None and result.no_capacity is None
    assert result.refusal == Refusal(Rule.interactive_servers, "user", "alice", 2, 1, 2, "servers")
    assert result.reason == result.refusal.message
    assert ledger.get("three") is None
    assert server(ledger, "four", user="bob", policy=policy).granted


def test_group_quota_counts_every_member(ledger):
    policy = QuotaPolicy(groups={"vision": Limits(InteractiveLimits(max_milli_gpu=2000))})
    assert server(ledger, "a", user="alice", request=SliceRequest(gpus=1, pool="dev"), policy=policy).granted
    assert server(
        ledger, "b", user="bob", request=SliceRequest(milli_gpu=875, pool="dev"), policy=policy
    ).granted
    refused = server(
        ledger, "c", user="carol", request=SliceRequest(milli_gpu=250, pool="dev"), policy=policy
    )
    assert refused.refusal.rule == "interactive_milli_gpu"
    assert (refused.refusal.holder_kind, refused.refusal.holder) == ("group", "vision")
    assert refused.refusal.usage == 1875 and refused.refusal.requested == 250
    assert server(ledger, "d", user="carol", request=EIGHTH, policy=policy).granted


def test_released_leases_free_their_quota(ledger):
    policy = QuotaPolicy(default_user=Limits(InteractiveLimits(max_servers=1)))
    assert server(ledger, "one", policy=policy).granted
    assert not server(ledger, "two", policy=policy).granted
    ledger.release("one")
    assert server(ledger, "two", policy=policy).granted


def test_batch_quota_is_checked_when_a_job_starts(ledger):
    policy = QuotaPolicy(
        groups={"vision": Limits(batch=BatchLimits(guaranteed_gpus=1, borrowing_limit_gpus=1))}
    )
    job = SliceRequest(gpus=1, pool="train")
    assert ledger.allocate("j1", "job-1", "alice", "vision", "batch", job, policy).granted
    assert ledger.allocate("j2", "job-2", "bob", "vision", "batch", job, policy, preemptible=True).granted
    refused = ledger.allocate(
        "j3", "job-3", "bob", "vision", "batch", SliceRequest(gpus=1, pool="dev"), policy
    )
    assert refused.refusal.rule == "batch_gpus" and refused.refusal.usage == 2
    assert ledger.get("j2").preemptible and not ledger.get("j1").preemptible


def test_no_capacity_says_why_in_a_sentence(ledger):
    for index in range(4):
        assert server(ledger, f"whole-{index}", request=SliceRequest(gpus=1, pool="dev")).granted
    result = server(ledger, "one-more")
    assert result.lease is None and result.refusal is None
    # The sentence is the placement's explanation; it names the pool and the size asked for.
    assert "dev" in result.no_capacity and "1/8" in result.no_capacity
    assert result.reason == result.no_capacity
    gang = ledger.allocate("gang", "job", "bob", None, "batch", SliceRequest(gpus=3, pool="train"), UNLIMITED)
    assert "3" in gang.no_capacity


def test_a_ledger_reopened_on_the_same_file_keeps_its_leases(sqlite_url, inventory, clock):
    with contextlib.closing(Ledger(sqlite_url, clock=clock)) as ledger:
        ledger.create_schema()
        ledger.sync_inventory(inventory)
        for index in range(4):
            server(ledger, f"lease-{index}", request=SliceRequest(gpus=1, pool="dev"))
        ledger.release("lease-0")
        live = ledger.list_leases()
    with contextlib.closing(Ledger(sqlite_url, clock=clock)) as reopened:
        reopened.create_schema()
        assert reopened.list_leases() == live
        assert reopened.record("lease-0").released_at == clock.now
        # What the old process granted is still taken: one whole dev GPU is left, not four.
        assert server(reopened, "new-1", request=SliceRequest(gpus=1, pool="dev")).granted
        assert not server(reopened, "new-2", request=SliceRequest(gpus=1, pool="dev")).granted
        assert server(reopened, "lease-1", request=SliceRequest(gpus=1, pool="dev")).existing


def test_list_leases_filters_by_user_and_liveness(ledger, clock):
    for lease_id, user in [("a", "alice"), ("b", "bob"), ("c", "alice")]:
        server(ledger, lease_id, user=user)
        clock.advance(1)
    ledger.release("a")
    assert [lease.id for lease in ledger.list_leases()] == ["b", "c"]
    assert [lease.id for lease in ledger.list_leases(user="alice")] == ["c"]
    assert [lease.id for lease in ledger.list_leases(user="alice", live_only=False)] == ["a", "c"]


def test_usage_counts_live_leases_per_user_and_group(ledger):
    server(ledger, "a", user="alice", group="vision")
    server(ledger, "b", user="bob", group="vision", request=SliceRequest(gpus=1, pool="dev"))
    ledger.allocate("j", "job", "alice", None, "batch", SliceRequest(gpus=2, pool="train"), UNLIMITED)
    server(ledger, "gone", user="alice")
    ledger.release("gone")
    usage = ledger.usage()
    alice, bob, vision = usage.of_user("alice"), usage.of_user("bob"), usage.of_group("vision")
    assert (alice.servers, alice.interactive_milli, alice.batch_jobs, alice.batch_milli) == (1, 125, 1, 2000)
    assert (bob.servers, bob.interactive_milli) == (1, 1000)
    assert (vision.servers, vision.interactive_milli, vision.batch_jobs) == (2, 1125, 0)


def test_gpu_holders_lists_every_present_gpu(ledger, inventory):
    server(ledger, "a", user="alice")
    server(ledger, "b", user="bob")
    holders = ledger.gpu_holders()
    assert set(holders) == {gpu.uuid for node in inventory for gpu in node.gpus}
    held = Counter(entry.user for entries in holders.values() for entry in entries)
    assert held == {"alice": 1, "bob": 1}


@pytest.mark.parametrize("lease_id", ["", "x" * 256])
def test_lease_ids_must_fit_the_column(ledger, lease_id):
    with pytest.raises(ValueError, match="lease id"):
        server(ledger, lease_id)


@pytest.mark.parametrize("policy_name", ["default", "fgd", "best-fit", "packing", "spread"])
def test_every_placement_policy_can_be_named(ledger, policy_name):
    result = server(ledger, "lease-1", policy_name=policy_name)
    assert result.granted
    assert ledger.record("lease-1").policy_name == policy_name
