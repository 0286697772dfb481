"""Quota rules: each rule refuses at its limit and not before, and says so in words and data."""

from __future__ import annotations

import datetime
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spawner.core.quota import (
    WEEK_SECONDS,
    BatchLimits,
    InteractiveLimits,
    Limits,
    QuotaPolicy,
    Refusal,
    Rule,
    Usage,
    batch_never_starts,
    charge_group,
    check,
    check_batch_start,
    check_interactive,
    split_by_week,
    week_start,
)
from spawner.core.units import GPUShare, Lease, Placement, SliceRequest, WorkloadClass

EIGHTH = SliceRequest(milli_gpu=125)
HALF = SliceRequest(milli_gpu=500)
interactive, batch = WorkloadClass.interactive, WorkloadClass.batch


def usage_of(*grants: tuple[str, str | None, WorkloadClass, SliceRequest]) -> Usage:
    usage = Usage()
    for user, group, workload, request in grants:
        usage = usage.plus(user, group, workload, request)
    return usage


# ------------------------------------------------------------------------- interactive


def test_user_server_limit_refuses_the_server_beyond_it():
    policy = QuotaPolicy(users={"alice": Limits(InteractiveLimits(max_servers=2))})
    one = usage_of(("alice", None, interactive, EIGHTH))
    assert check_interactive(policy, one, "alice", None, EIGHTH) is None

    two = one.plus("alice", None, interactive, EIGHTH)
    refusal = check_interactive(policy, two, "alice", None, EIGHTH)
    assert refusal == Refusal(Rule.interactive_servers, "user", "alice", 2, 1, 2, "servers")
    assert str(refusal) == (
        "user alice already runs 2/2 notebook servers with a GPU slice; stop one of your servers "
        "or ask an admin to raise your quota"
    )


def test_group_milli_limit_names_the_group_and_what_the_request_needs():
    policy = QuotaPolicy(groups={"vision": Limits(InteractiveLimits(max_milli_gpu=6000))})
    usage = usage_of(*[(f"user{i}", "vision", interactive, SliceRequest(gpus=1)) for i in range(6)])
    refusal = check_interactive(policy, usage, "bob", "vision", EIGHTH)
    assert refusal is not None
    assert (refusal.rule, refusal.holder_kind, refusal.holder) == ("interactive_milli_gpu", "group", "vision")
    assert (refusal.usage, refusal.requested, refusal.limit, refusal.unit) == (6000, 125, 6000, "milli-GPU")
    assert refusal.message.startswith(
        "group vision already uses 6000/6000 milli-GPU of interactive slices; this request needs 125 more"
    )
    assert "ask an admin to raise the group's quota" in refusal.message


def test_milli_limit_allows_a_request_that_fills_it_exactly():
    policy = QuotaPolicy(users={"alice": Limits(InteractiveLimits(max_milli_gpu=625))})
    usage = usage_of(("alice", None, interactive, HALF))
    assert check_interactive(policy, usage, "alice", None, EIGHTH) is None
    assert check_interactive(policy, usage, "alice", None, SliceRequest(milli_gpu=126)) is not None


def test_user_limit_is_reported_before_the_group_limit():
    limits = Limits(InteractiveLimits(max_servers=1))
    policy = QuotaPolicy(users={"alice": limits}, groups={"vision": limits})
    usage = usage_of(("alice", "vision", interactive, EIGHTH))
    assert check_interactive(policy, usage, "alice", "vision", EIGHTH).holder_kind == "user"
    assert check_interactive(policy, usage, "bob", "vision", EIGHTH).holder_kind == "group"


def test_cpu_only_servers_are_not_rationed_by_gpu_quota():
    policy = QuotaPolicy(default_user=Limits(InteractiveLimits(max_servers=0, max_milli_gpu=0)))
    cpu_only = SliceRequest(cpu_milli=2000)
    assert check_interactive(policy, Usage(), "alice", None, cpu_only) is None
    assert usage_of(("alice", None, interactive, cpu_only)).of_user("alice").servers == 0
    assert check_interactive(policy, Usage(), "alice", None, EIGHTH).rule == "interactive_servers"


def test_defaults_apply_to_holders_without_an_entry_and_none_means_unlimited():
    policy = QuotaPolicy(
        users={"vip": Limits()},
        default_user=Limits(InteractiveLimits(max_servers=1)),
    )
    usage = usage_of(("vip", None, interactive, EIGHTH), ("bob", None, interactive, EIGHTH))
    assert check_interactive(policy, usage, "vip", None, EIGHTH) is None
    assert check_interactive(policy, usage, "bob", None, EIGHTH).rule == "interactive_servers"
    assert check_interactive(QuotaPolicy(), usage, "bob", "any", SliceRequest(gpus=8)) is None


def test_batch_leases_do_not_count_against_interactive_quota():
    policy = QuotaPolicy(users={"alice": Limits(InteractiveLimits(max_servers=1, max_milli_gpu=125))})
    usage = usage_of(("alice", None, batch, SliceRequest(gpus=4)))
    assert check_interactive(policy, usage, "alice", None, EIGHTH) is None


# -------------------------------------------------------------------------------- batch


def test_running_jobs_limit():
    policy = QuotaPolicy(users={"alice": Limits(batch=BatchLimits(max_running_jobs=2))})
    usage = usage_of(*[("alice", None, batch, SliceRequest(gpus=1))] * 2)
    refusal = check_batch_start(policy, usage, "alice", None, SliceRequest(gpus=1))
    assert refusal == Refusal(Rule.batch_running_jobs, "user", "alice", 2, 1, 2, "jobs")
    assert refusal.message.startswith("user alice already runs 2/2 batch jobs; this job can start when")


def test_batch_gpus_are_capped_by_guarantee_plus_borrowing():
    limits = Limits(batch=BatchLimits(guaranteed_gpus=4, borrowing_limit_gpus=2))
    policy = QuotaPolicy(groups={"vision": limits})
    usage = usage_of(("alice", "vision", batch, SliceRequest(gpus=4)))
    assert check_batch_start(policy, usage, "bob", "vision", SliceRequest(gpus=2)) is None
    refusal = check_batch_start(policy, usage, "bob", "vision", SliceRequest(gpus=3))
    assert (refusal.rule, refusal.usage, refusal.requested, refusal.limit, refusal.unit) == (
        "batch_gpus",
        4,
        3,
        6,
        "GPUs",
    )
    assert refusal.message.startswith("group vision already uses 4/6 GPUs for batch jobs")
    assert "this job needs 3 more" in refusal.message


def test_a_job_bigger_than_the_guarantee_plus_borrowing_could_never_start():
    limits = Limits(batch=BatchLimits(guaranteed_gpus=4, borrowing_limit_gpus=2))
    policy = QuotaPolicy(groups={"vision": limits})
    assert batch_never_starts(policy, "bob", "vision", 6, 3600) is None
    why = batch_never_starts(policy, "bob", "vision", 7, 3600)
    assert why == (
        "gpus: group vision may hold at most 6 GPUs for batch jobs (guaranteed 4 plus borrowing 2); "
        "this job asks for 7 and could never start; ask for 6 or fewer, or ask an admin to raise the "
        "group's quota"
    )


def test_a_job_longer_than_a_weeks_budget_could_never_start_and_cpu_jobs_are_not_rationed():
    policy = QuotaPolicy(default_user=Limits(batch=BatchLimits(max_gpu_hours_week=100, max_running_jobs=2)))
    assert batch_never_starts(policy, "alice", None, 2, 50 * 3600) is None  # exactly the budget
    why = batch_never_starts(policy, "alice", None, 2, 60 * 3600)
    assert why.startswith("time_limit: user alice has 100 GPU-hours of batch jobs a week, and this job")
    assert "may take 120 (2 GPUs for its time limit)" in why
    assert "give a time limit of at most 50h, or fewer GPUs, or ask an admin to raise your quota" in why
    assert batch_never_starts(policy, "alice", None, 0, float("inf")) is None
    closed = QuotaPolicy(default_user=Limits(batch=BatchLimits(max_running_jobs=0)))
    assert batch_never_starts(closed, "alice", None, 1, 60).startswith("user alice may run no batch jobs")


def test_unlimited_borrowing_means_no_batch_gpu_cap():
    policy = QuotaPolicy(default_group=Limits(batch=BatchLimits(guaranteed_gpus=1)))
    usage = usage_of(("alice", "vision", batch, SliceRequest(gpus=40)))
    assert check_batch_start(policy, usage, "alice", "vision", SliceRequest(gpus=8)) is None


def test_fractional_batch_usage_is_compared_exactly():
    policy = QuotaPolicy(users={"alice": Limits(batch=BatchLimits(borrowing_limit_gpus=1))})
    usage = usage_of(("alice", None, batch, SliceRequest(milli_gpu=500)))
    assert check_batch_start(policy, usage, "alice", None, SliceRequest(milli_gpu=500)) is None
    refusal = check_batch_start(policy, usage, "alice", None, SliceRequest(milli_gpu=501))
    assert (refusal.usage, refusal.requested) == (0.5, 0.501)
    assert "uses 0.5/1 GPUs" in refusal.message


def test_spent_weekly_budget_refuses_and_says_when_it_renews():
    policy = QuotaPolicy(users={"alice": Limits(batch=BatchLimits(max_gpu_hours_week=40))})
    spent = Usage.from_leases([], user_batch_gpu_hours={"alice": 40.0})
    refusal = check_batch_start(policy, spent, "alice", None, SliceRequest(gpus=1))
    assert (refusal.rule, refusal.usage, refusal.limit, refusal.unit) == (
        "batch_gpu_hours_week",
        40.0,
        40,
        "GPU-hours",
    )
    assert refusal.message == (
        "user alice has used 40/40 GPU-hours of batch jobs this week; the budget renews on "
        "Monday 00:00 UTC, or ask an admin to raise your quota"
    )
    almost = Usage.from_leases([], user_batch_gpu_hours={"alice": 39.5})
    assert check_batch_start(policy, almost, "alice", None, SliceRequest(gpus=1)) is None


def test_expected_gpu_hours_are_checked_against_what_is_left():
    policy = QuotaPolicy(groups={"vision": Limits(batch=BatchLimits(max_gpu_hours_week=10))})
    usage = Usage.from_leases([], group_batch_gpu_hours={"vision": 4.0})
    request = SliceRequest(gpus=2)
    assert check_batch_start(policy, usage, "a", "vision", request, expected_gpu_hours=6) is None
    refusal = check_batch_start(policy, usage, "a", "vision", request, expected_gpu_hours=6.5)
    assert refusal.requested == 6.5
    assert "has used 4/10 GPU-hours of batch jobs this week; this job may need 6.5 more" in refusal.message


def test_interactive_leases_do_not_count_against_batch_quota():
    policy = QuotaPolicy(
        users={"alice": Limits(batch=BatchLimits(max_running_jobs=1, borrowing_limit_gpus=1))}
    )
    usage = usage_of(("alice", None, interactive, SliceRequest(gpus=4)))
    assert check_batch_start(policy, usage, "alice", None, SliceRequest(gpus=1)) is None


def test_check_dispatches_on_the_workload_class():
    policy = QuotaPolicy(
        default_user=Limits(InteractiveLimits(max_servers=0), BatchLimits(max_running_jobs=0))
    )
    assert check(policy, Usage(), "a", None, interactive, EIGHTH).rule == "interactive_servers"
    assert check(policy, Usage(), "a", None, "batch", EIGHTH).rule == "batch_running_jobs"


# ---------------------------------------------------------------------- values and helpers


def lease(
    lease_id: str, user: str, group: str | None, workload: WorkloadClass, request: SliceRequest
) -> Lease:
    shares = tuple(GPUShare(f"gpu-{i}", request.per_gpu_milli, 1024) for i in range(request.gpu_count))
    return Lease(lease_id, "holder", user, group, workload, request, Placement("node", shares), 0.0)


def test_usage_from_leases_counts_each_class_per_user_and_group():
    leases = [
        lease("a", "alice", "vision", interactive, EIGHTH),
        lease("b", "alice", None, interactive, SliceRequest(gpus=2)),
        lease("c", "bob", "vision", batch, SliceRequest(gpus=3)),
        lease("d", "bob", "vision", interactive, SliceRequest(cpu_milli=500)),
    ]
    usage = Usage.from_leases(
        leases, user_batch_gpu_hours={"carol": 2.5}, group_batch_gpu_hours={"vision": 7.0}
    )
    alice, bob, carol, vision = (
        usage.of_user("alice"),
        usage.of_user("bob"),
        usage.of_user("carol"),
        usage.of_group("vision"),
    )
    assert (alice.servers, alice.interactive_milli, alice.batch_jobs) == (2, 2125, 0)
    assert (bob.servers, bob.batch_jobs, bob.batch_milli, bob.batch_gpus) == (0, 1, 3000, 3.0)
    assert carol.batch_gpu_hours_week == 2.5 and carol.servers == 0
    assert (vision.servers, vision.interactive_milli, vision.batch_jobs, vision.batch_gpu_hours_week) == (
        1,
        125,
        1,
        7.0,
    )
    assert usage.of_group("nobody").servers == 0


def test_refusal_to_dict_is_json_with_the_message():
    refusal = Refusal("interactive_milli_gpu", "group", "vision", 6000, 125, 6000, "milli-GPU")
    data = json.loads(json.dumps(refusal.to_dict()))
    assert data == {
        "rule": "interactive_milli_gpu",
        "holder_kind": "group",
        "holder": "vision",
        "usage": 6000,
        "requested": 125,
        "limit": 6000,
        "unit": "milli-GPU",
        "message": refusal.message,
    }


def test_refusal_rejects_unknown_rules_and_holder_kinds():
    with pytest.raises(ValueError):
        Refusal("gpu_colour", "user", "alice", 1, 1, 1, "x")
    with pytest.raises(ValueError):
        Refusal("batch_gpus", "team", "alice", 1, 1, 1, "x")


def test_limits_must_not_be_negative():
    with pytest.raises(ValueError, match="max_servers"):
        InteractiveLimits(max_servers=-1)
    with pytest.raises(ValueError, match="guaranteed_gpus"):
        BatchLimits(guaranteed_gpus=-2)


def test_charge_group_prefers_groups_with_a_quota_entry_by_sorted_name():
    policy = QuotaPolicy(groups={"vision": Limits(), "nlp": Limits()})
    assert charge_group(["everyone", "vision", "nlp"], policy) == "nlp"
    assert charge_group(["vision", "everyone"], policy) == "vision"
    assert charge_group(["zeta", "alpha"], policy) == "alpha"
    assert charge_group([], policy) is None


def test_week_starts_on_monday_midnight_utc():
    thursday = datetime.datetime(2024, 5, 16, 15, 30, tzinfo=datetime.timezone.utc).timestamp()
    monday = datetime.datetime(2024, 5, 13, tzinfo=datetime.timezone.utc).timestamp()
    assert week_start(thursday) == monday
    assert week_start(monday) == monday
    assert week_start(monday - 1) == monday - WEEK_SECONDS


def test_split_by_week_charges_each_week_its_part():
    monday = datetime.datetime(2024, 5, 13, tzinfo=datetime.timezone.utc).timestamp()
    assert split_by_week(monday - 600, monday + 60) == [(monday - WEEK_SECONDS, 600), (monday, 60)]
    assert split_by_week(monday + 5, monday + 5) == []


@given(start=st.floats(0, 4e9), length=st.floats(0, 5 * WEEK_SECONDS))
def test_split_by_week_covers_the_interval_exactly(start, length):
    pieces = split_by_week(start, start + length)
    assert sum(seconds for _, seconds in pieces) == pytest.approx(length, abs=1e-3)
    assert all(seconds > 0 for _, seconds in pieces)
    assert [week for week, _ in pieces] == sorted({week for week, _ in pieces})


# ------------------------------------------------------------------------------- properties

USERS = ["alice", "bob", "carol"]
GROUPS = [None, "vision", "nlp"]

optional_count = st.none() | st.integers(0, 4)
interactive_limits = st.builds(
    InteractiveLimits, max_servers=optional_count, max_milli_gpu=st.none() | st.integers(0, 3000)
)
batch_limits = st.builds(
    BatchLimits,
    guaranteed_gpus=st.integers(0, 3),
    borrowing_limit_gpus=optional_count,
    max_running_jobs=optional_count,
)
limits = st.builds(Limits, interactive_limits, batch_limits)
policies = st.builds(
    QuotaPolicy,
    users=st.dictionaries(st.sampled_from(USERS), limits),
    groups=st.dictionaries(st.sampled_from(GROUPS[1:]), limits),
    default_user=st.none() | limits,
    default_group=st.none() | limits,
)
requests = st.one_of(
    st.builds(SliceRequest, milli_gpu=st.integers(1, 1000)),
    st.builds(SliceRequest, gpus=st.integers(0, 4)),
)
asks = st.tuples(
    st.sampled_from(USERS), st.sampled_from(GROUPS), st.sampled_from(list(WorkloadClass)), requests
)


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


@settings(max_examples=200)
@given(policy=policies, sequence=st.lists(asks, max_size=40))
def test_accepted_requests_never_take_anyone_over_quota(policy, sequence):
    usage = Usage()
    for user, group, workload, request in sequence:
        if check(policy, usage, user, group, workload, request) is None:
            usage = usage.plus(user, group, workload, request)
        for name, held in usage.users.items():
            assert within(policy.for_user(name), held)
        for name, held in usage.groups.items():
            assert within(policy.for_group(name), held)


@settings(max_examples=200)
@given(policy=policies, sequence=st.lists(asks, max_size=20), ask=asks)
def test_a_refusal_reports_a_real_excess(policy, sequence, ask):
    usage = Usage()
    for user, group, workload, request in sequence:
        usage = usage.plus(user, group, workload, request)
    user, group, workload, request = ask
    refusal = check(policy, usage, user, group, workload, request)
    if refusal is None:
        after = usage.plus(user, group, workload, request)
        holders = [(policy.for_user(user), usage.of_user(user), after.of_user(user))]
        if group is not None:
            holders.append((policy.for_group(group), usage.of_group(group), after.of_group(group)))
        for holder_limits, before, now in holders:
            assert within(holder_limits, now) or not within(holder_limits, before)
        return
    assert refusal.usage + refusal.requested > refusal.limit
    assert refusal.holder in (user, group)
    assert f"{refusal.holder_kind.value} {refusal.holder}" in refusal.message
