"""Profiles as loaded from a good directory: their fields, slice requests, labels and visibility."""

from __future__ import annotations

import jsonschema
import pytest

from spawner.config.profiles import Profile, ProfileSet, load_profiles, load_schema, parse_size_mib
from spawner.core.quota import BatchLimits, InteractiveLimits, Limits
from spawner.core.units import SliceRequest, SliceRequestError

from .conftest import REPO_PROFILES


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(load_schema())


def test_profiles_come_in_file_order_and_the_gpu_inventory_is_skipped(good_dir):
    profile_set = load_profiles(good_dir)

    assert [profile.slug for profile in profile_set] == ["cpu", "gpu-1-8", "train-2"]
    assert profile_set.files == ("profiles/a.yaml", "profiles/b.yaml", "profiles/quotas.yaml")
    assert profile_set.directory == "profiles"
    assert len(profile_set) == 3


def test_every_field_is_read_into_its_type(good_dir):
    profile = load_profiles(good_dir).by_slug["gpu-1-8"]

    assert profile == Profile(
        slug="gpu-1-8",
        display_name="1/8 A100",
        description="An eighth of an A100.",
        milli_gpu=125,
        gpu_memory_mib=10240,
        gpu_models=("A100-80GB",),
        pool="dev",
        cpu_limit=2.0,
        cpu_guarantee=0.5,
        mem_limit_mib=8192,
        mem_guarantee_mib=1536,
        image="example.org/pytorch:1",
        environment={"OMP_NUM_THREADS": "2"},
        groups=frozenset({"vision", "nlp"}),
    )
    assert profile.source == "profiles/a.yaml:9"
    assert not profile.default


def test_profiles_remember_the_line_they_start_on(good_dir):
    profile_set = load_profiles(good_dir)

    assert [profile.source for profile in profile_set] == [
        "profiles/a.yaml:3",
        "profiles/a.yaml:9",
        "profiles/b.yaml:2",
    ]


def test_profiles_are_read_only_and_hashable(good_dir):
    profile = load_profiles(good_dir).by_slug["gpu-1-8"]

    with pytest.raises(TypeError):
        profile.environment["EXTRA"] = "1"  # type: ignore[index]
    assert {profile, profile} == {profile}


@pytest.mark.parametrize(
    ("text", "mib"),
    [
        ("512M", 512),
        ("512Mi", 512),
        ("8G", 8192),
        ("8Gi", 8192),
        ("1.5G", 1536),
        ("1T", 1024 * 1024),
        ("2048K", 2),
        ("1536K", 2),
    ],
)
def test_sizes_use_binary_multiples_and_round_up_to_a_whole_mib(text, mib):
    assert parse_size_mib(text) == mib


@pytest.mark.parametrize("text", ["8", "8X", "G", "8 G B", "-1G"])
def test_sizes_without_a_known_unit_are_refused(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size_mib(text)


def test_slice_request_sets_aside_the_guarantees():
    profile = Profile(
        slug="p",
        display_name="P",
        milli_gpu=250,
        gpu_models=("A100-80GB", "H100-80GB"),
        cpu_guarantee=0.5,
        cpu_limit=4,
        mem_guarantee_mib=2048,
        mem_limit_mib=8192,
    )

    assert profile.slice_request == SliceRequest(
        milli_gpu=250,
        cpu_milli=500,
        memory_mib=2048,
        gpu_models=frozenset({"A100-80GB", "H100-80GB"}),
        pool="dev",
    )


def test_slice_request_falls_back_to_the_limits_without_guarantees(good_dir):
    profile_set = load_profiles(good_dir)

    cpu_request = SliceRequest(cpu_milli=2000, memory_mib=8192, pool="dev")
    assert profile_set.by_slug["cpu"].slice_request == cpu_request
    assert profile_set.by_slug["train-2"].slice_request == SliceRequest(gpus=2, pool="train")
    assert not profile_set.by_slug["cpu"].has_gpu
    assert profile_set.by_slug["train-2"].has_gpu


def test_a_profile_no_allocator_could_grant_cannot_be_built():
    with pytest.raises(SliceRequestError, match="milli_gpu"):
        Profile(slug="p", display_name="P", milli_gpu=1500)


@pytest.mark.parametrize(
    ("fields", "label"),
    [
        (
            {"milli_gpu": 125, "gpu_memory_mib": 10240, "cpu_limit": 2, "mem_limit_mib": 8192},
            "1/8 GPU (10 GB) · 2 CPU · 8 GB",
        ),
        (
            {"milli_gpu": 500, "gpu_memory_mib": 7680, "gpu_models": ("T4",), "cpu_limit": 0.5},
            "1/2 T4 (7.5 GB) · 0.5 CPU",
        ),
        ({"gpus": 1, "gpu_models": ("A100-80GB", "H100-80GB")}, "1 × A100-80GB or H100-80GB"),
        ({"gpus": 2}, "2 GPUs"),
        ({"gpus": 1, "mem_limit_mib": 512}, "1 GPU · 512 MB"),
        ({"cpu_guarantee": 1, "mem_guarantee_mib": 2048}, "no GPU · 1 CPU · 2 GB"),
        ({"cpu_guarantee": 1, "cpu_limit": 3}, "no GPU · 3 CPU"),
        ({}, "no GPU"),
    ],
)
def test_describe_shows_the_slice_and_the_limits(fields, label):
    assert Profile(slug="p", display_name="P", **fields).describe() == label


@pytest.mark.parametrize(
    ("groups", "user_groups", "is_admin", "visible"),
    [
        (frozenset(), set(), False, True),
        ({"vision"}, {"vision", "staff"}, False, True),
        ({"vision"}, {"nlp"}, False, False),
        ({"vision"}, set(), True, True),
    ],
)
def test_visible_to_everyone_without_groups_and_to_members_and_admins_with_them(
    groups, user_groups, is_admin, visible
):
    profile = Profile(slug="p", display_name="P", groups=groups)

    assert profile.visible_to(user_groups, is_admin) is visible


def test_a_user_who_cannot_see_the_default_gets_their_first_visible_profile():
    profile_set = ProfileSet(
        profiles=(
            Profile(slug="vision-only", display_name="V", groups={"vision"}),
            Profile(slug="staff-default", display_name="S", groups={"staff"}, default=True),
            Profile(slug="nlp-only", display_name="N", groups={"nlp"}),
        )
    )

    assert profile_set.default_for({"staff", "nlp"}, False).slug == "staff-default"
    assert profile_set.default_for({"nlp"}, False).slug == "nlp-only"
    assert [profile.slug for profile in profile_set.visible_to({"nlp"}, False)] == ["nlp-only"]
    assert profile_set.default_for(set(), False) is None
    assert profile_set.default_for(set(), True).slug == "staff-default"


def test_quotas_become_the_policy_with_missing_figures_unlimited(good_dir):
    profile_set = load_profiles(good_dir)
    quotas = profile_set.quotas

    assert quotas.default_user == Limits(interactive=InteractiveLimits(max_servers=2))
    assert quotas.default_group is None
    assert quotas.for_group("researchers") == Limits(
        interactive=InteractiveLimits(max_servers=8, max_milli_gpu=4000),
        batch=BatchLimits(
            guaranteed_gpus=2, borrowing_limit_gpus=4, max_running_jobs=3, max_gpu_hours_week=100.5
        ),
    )
    assert quotas.for_user("alice") == Limits(batch=BatchLimits(max_running_jobs=1))
    assert quotas.for_user("bob") == quotas.default_user
    assert profile_set.quota_entries == 3


def test_a_directory_without_quotas_limits_nobody(profiles_dir):
    from .conftest import GOOD_PROFILES

    profile_set = load_profiles(profiles_dir("a.yaml", GOOD_PROFILES))

    assert profile_set.quota_entries == 0
    assert profile_set.quotas.for_user("anyone") == Limits()


def test_profiles_and_quotas_may_share_one_file(profiles_dir):
    directory = profiles_dir(
        "all.yaml",
        """
        profiles:
          - {slug: cpu, display_name: CPU}
        quotas:
          default_group: {batch: {guaranteed_gpus: 1}}
        """,
    )

    profile_set = load_profiles(directory)

    assert [profile.slug for profile in profile_set] == ["cpu"]
    assert profile_set.quotas.for_group("any").batch.guaranteed_gpus == 1


def test_shipped_profiles_validate_and_offer_cpu_slices_whole_and_a_second_model():
    profile_set = load_profiles(REPO_PROFILES)

    defaults = [profile.slug for profile in profile_set if profile.default]
    assert defaults == ["cpu"]
    assert not profile_set.by_slug["cpu"].has_gpu
    a100 = [profile for profile in profile_set if profile.gpu_models == ("A100-80GB",)]
    assert sorted(profile.slice_request.total_milli for profile in a100) == [125, 250, 500, 1000]
    other_models = {model for profile in profile_set for model in profile.gpu_models} - {"A100-80GB"}
    assert other_models
    for profile in a100:
        if profile.gpu_memory_mib is not None:
            # Written-out memory must equal what the fraction of an 80 GB card would give.
            assert profile.gpu_memory_mib == 81920 * profile.milli_gpu // 1000


def test_shipped_quotas_hold_the_researchers_group_and_a_default_user():
    quotas = load_profiles(REPO_PROFILES).quotas

    researchers = quotas.groups["researchers"].interactive
    assert (researchers.max_servers, researchers.max_milli_gpu) == (8, 4000)
    assert quotas.default_user is not None
    assert quotas.default_user.interactive.max_servers == 2
