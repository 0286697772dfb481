"""``Ledger.grant``: recording exactly the placement the batch scheduler chose, or saying why not."""

from __future__ import annotations

import re

import pytest

from spawner.core.quota import BatchLimits, InteractiveLimits, Limits, QuotaPolicy, Rule
from spawner.core.units import GPUShare, Node, Placement, SliceRequest, WorkloadClass
from spawner.ledger import LeaseConflictError, Ledger

OPEN = QuotaPolicy()
ONE_GPU = SliceRequest(gpus=1, pool="train")
TWO_GPUS = SliceRequest(gpus=2, pool="train", cpu_milli=8000, memory_mib=65536)
A100 = 81920


def on_train(*indices: int, cpu_milli: int = 0, memory_mib: int = 0) -> Placement:
    shares = tuple(GPUShare(f"train-gpu{i}", 1000, A100) for i in indices)
    return Placement("train", shares, cpu_milli=cpu_milli, memory_mib=memory_mib)


def grant(ledger: Ledger, lease_id: str, request: SliceRequest, placement: Placement, **options):
    options.setdefault("quota_policy", OPEN)
    user = options.pop("user", "ana")
    group = options.pop("group", "vision")
    workload = options.pop("workload", WorkloadClass.batch)
    quota_policy = options.pop("quota_policy")
    return ledger.grant(
        lease_id, f"job:{lease_id}", user, group, workload, request, placement, quota_policy, **options
    )


def test_grant_records_exactly_the_placement(ledger: Ledger, clock) -> None:
    placement = on_train(1, 0, cpu_milli=8000, memory_mib=65536)

    result = grant(ledger, "job-1-run-1", TWO_GPUS, placement, preemptible=True)

    assert result.granted and not result.existing
    assert result.lease.placement == placement  # not reordered, not re-chosen
    assert result.lease.preemptible and result.lease.created_at == clock.now
    record = ledger.record("job-1-run-1")
    assert record.lease == result.lease and record.live and record.policy_name == "exact"
    assert [holder.lease_id for holder in ledger.gpu_holders()["train-gpu1"]] == ["job-1-run-1"]


def test_grant_is_idempotent_by_lease_id(ledger: Ledger, clock) -> None:
    first = grant(ledger, "job-1-run-1", ONE_GPU, on_train(0))
    clock.advance(60)

    again = grant(ledger, "job-1-run-1", ONE_GPU, on_train(0))
    # A scheduler that decided again after a crash gets the lease where it really is.
    elsewhere = grant(ledger, "job-1-run-1", ONE_GPU, on_train(1))

    assert again.existing and again.lease == first.lease
    assert elsewhere.existing and elsewhere.lease.placement == on_train(0)
    assert len(ledger.list_leases()) == 1
    with pytest.raises(LeaseConflictError, match="different request"):
        grant(ledger, "job-1-run-1", TWO_GPUS, on_train(0, 1, cpu_milli=8000, memory_mib=65536))
    ledger.release("job-1-run-1")
    with pytest.raises(LeaseConflictError, match="already granted and released"):
        grant(ledger, "job-1-run-1", ONE_GPU, on_train(0))


def test_an_over_capacity_placement_is_refused_with_a_sentence_and_nothing_changes(ledger: Ledger) -> None:
    assert grant(ledger, "job-1-run-1", ONE_GPU, on_train(0)).granted
    holders, usage = ledger.gpu_holders(), ledger.usage()

    taken = grant(ledger, "job-2-run-1", TWO_GPUS, on_train(0, 1, cpu_milli=8000, memory_mib=65536))

    assert not taken.granted and taken.refusal is None
    assert taken.reason.startswith("the placement chosen for lease job-2-run-1 on node train no longer fits")
    assert "GPU milli of node train would go out of bounds" in taken.reason
    assert ledger.get("job-2-run-1") is None
    assert ledger.gpu_holders() == holders and ledger.usage() == usage
    # the GPU that is still free can be granted
    assert grant(ledger, "job-2-run-2", ONE_GPU, on_train(1)).granted


def test_host_capacity_and_vanished_gpus_are_capacity_not_bugs(ledger: Ledger, inventory: list[Node]) -> None:
    too_much_cpu = SliceRequest(gpus=1, pool="train", cpu_milli=40000)
    result = grant(ledger, "job-1-run-1", too_much_cpu, on_train(0, cpu_milli=40000))
    assert "CPU or memory of node train would go out of bounds" in result.no_capacity

    ledger.sync_inventory([node for node in inventory if node.name != "train"])
    gone = grant(ledger, "job-2-run-1", ONE_GPU, on_train(0))
    assert "unknown node 'train'" in gone.no_capacity
    assert ledger.list_leases(live_only=False) == []


@pytest.mark.parametrize(
    ("request_", "placement", "message"),
    [
        (TWO_GPUS, on_train(0, cpu_milli=8000, memory_mib=65536), "1 GPU shares for 2 GPUs"),
        (ONE_GPU, on_train(0, 0), "a GPU listed twice"),
        (
            ONE_GPU,
            Placement("train", (GPUShare("train-gpu0", 500, A100),)),
            "not 1000 milli-GPU on train-gpu0",
        ),
        (ONE_GPU, on_train(0, cpu_milli=2000), "2000 milli-CPU and 0 MiB for a request of 0 milli-CPU"),
        (ONE_GPU, Placement("dev-a", (GPUShare("dev-a-gpu0", 1000, 16384),)), "GPU dev-a-gpu0 (T4"),
        (
            SliceRequest(gpus=1, pool="train", gpu_models=frozenset({"H100"})),
            on_train(0),
            "GPU train-gpu0 (A100, pools ['train']) is not allowed",
        ),
        (ONE_GPU, Placement("train", (GPUShare("train-gpu0", 1000, 1024),)), "1024 MiB on GPU train-gpu0"),
    ],
)
def test_a_placement_that_is_not_the_request_is_a_bug(
    ledger: Ledger, request_: SliceRequest, placement: Placement, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        grant(ledger, "job-1-run-1", request_, placement)
    assert ledger.list_leases(live_only=False) == []


def test_batch_quota_running_jobs_and_gpus(ledger: Ledger) -> None:
    policy = QuotaPolicy(
        default_user=Limits(batch=BatchLimits(max_running_jobs=1)),
        groups={"vision": Limits(batch=BatchLimits(guaranteed_gpus=1, borrowing_limit_gpus=0))},
    )
    assert grant(ledger, "job-1-run-1", ONE_GPU, on_train(0), quota_policy=policy).granted

    second_job = grant(ledger, "job-2-run-1", ONE_GPU, on_train(1), quota_policy=policy)
    assert second_job.refusal.rule is Rule.batch_running_jobs
    assert second_job.refusal.holder == "ana" and "already runs 1/1 batch jobs" in second_job.reason

    other_member = grant(ledger, "job-3-run-1", ONE_GPU, on_train(1), quota_policy=policy, user="ben")
    assert other_member.refusal.rule is Rule.batch_gpus and other_member.refusal.holder == "vision"

    assert [lease.id for lease in ledger.list_leases()] == ["job-1-run-1"]
    assert grant(
        ledger, "job-4-run-1", ONE_GPU, on_train(1), quota_policy=policy, user="ben", group=None
    ).granted


def test_batch_quota_weekly_budget_counts_the_expected_hours(ledger: Ledger) -> None:
    policy = QuotaPolicy(default_user=Limits(batch=BatchLimits(max_gpu_hours_week=10)))

    too_long = grant(ledger, "job-1-run-1", ONE_GPU, on_train(0), quota_policy=policy, expected_gpu_hours=12)
    assert too_long.refusal.rule is Rule.batch_gpu_hours_week
    assert too_long.refusal.requested == 12
    assert ledger.get("job-1-run-1") is None

    fits = grant(ledger, "job-1-run-2", ONE_GPU, on_train(0), quota_policy=policy, expected_gpu_hours=8)
    assert fits.granted


def test_interactive_grants_use_the_interactive_quota(ledger: Ledger) -> None:
    policy = QuotaPolicy(default_user=Limits(interactive=InteractiveLimits(max_milli_gpu=250)))
    half = SliceRequest(milli_gpu=500)
    placement = Placement("dev-a", (GPUShare("dev-a-gpu0", 500, 8192),))

    refused = grant(ledger, "srv-1", half, placement, quota_policy=policy, workload="interactive")

    assert refused.refusal.rule is Rule.interactive_milli_gpu
    assert grant(ledger, "srv-1", half, placement, workload="interactive").granted


def test_grant_and_allocate_share_the_capacity(ledger: Ledger) -> None:
    allocated = ledger.allocate("job-0-run-1", "job:0", "ben", None, "batch", ONE_GPU, OPEN)
    taken_gpu = allocated.lease.placement.shares[0].gpu_uuid
    index = int(taken_gpu[-1])

    clash = grant(ledger, "job-1-run-1", ONE_GPU, on_train(index))
    free = grant(ledger, "job-1-run-2", ONE_GPU, on_train(1 - index))

    assert clash.no_capacity is not None and free.granted
    after = ledger.allocate("job-2-run-1", "job:2", "ben", None, "batch", ONE_GPU, OPEN)
    assert "no node has a whole train GPU free" in after.no_capacity
