"""Bad profile files: every problem is reported at once, naming file, line and field."""

from __future__ import annotations

import pytest

from spawner.config.profiles import ProfileConfigError, load_profiles

from .conftest import GOOD_PROFILES, GOOD_QUOTAS


def errors_in(directory: str) -> list[str]:
    with pytest.raises(ProfileConfigError) as raised:
        load_profiles(directory)
    return raised.value.errors


def one_profile(*lines: str) -> str:
    """A file whose third line starts the extra fields of one profile (slug 'p', on line 2)."""
    body = "".join(f"    {line}\n" for line in lines)
    return f"profiles:\n  - slug: p\n    display_name: P\n{body}"


def test_a_fraction_of_a_thousand_or_more_says_to_use_whole_gpus(profiles_dir):
    directory = profiles_dir(
        "default.yaml",
        """
        profiles:
          - slug: cpu
            display_name: CPU
          - slug: half
            display_name: Half
            milli_gpu: 500
          - slug: too-much
            display_name: Too much
            milli_gpu: 1500
        """,
    )

    assert errors_in(directory) == [
        "profiles/default.yaml:9: profiles[2].milli_gpu: expected an integer between 1 and 999 "
        "(use gpus: 1 for a whole GPU), got 1500"
    ]


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        (
            ["milli_gpu: 125", "gpus: 1"],
            "profiles/p.yaml:5: profiles[0].gpus: expected either milli_gpu (a fraction of one GPU) or "
            "gpus (whole GPUs), got both (milli_gpu: 125, gpus: 1); drop one",
        ),
        (
            ["mili_gpu: 125"],
            "profiles/p.yaml:4: profiles[0].mili_gpu: unknown field (did you mean 'milli_gpu'?); expected "
            "one of: slug, display_name, description, milli_gpu, gpus, gpu_memory_mib, gpu_models, pool, "
            "cpu_limit, cpu_guarantee, mem_limit, mem_guarantee, image, environment, groups, default, "
            "profile_options",
        ),
        (
            ["pool: devv"],
            "profiles/p.yaml:4: profiles[0].pool: expected 'dev' or 'train', got 'devv' "
            "(did you mean 'dev'?)",
        ),
        (
            ["gpus: 0"],
            "profiles/p.yaml:4: profiles[0].gpus: expected an integer >= 1 (whole GPUs on one node), got 0",
        ),
        (
            ["milli_gpu: 12.5"],
            "profiles/p.yaml:4: profiles[0].milli_gpu: expected an integer between 1 and 999 "
            "(use gpus: 1 for a whole GPU), got 12.5",
        ),
        (
            ["gpu_memory_mib: 1024"],
            "profiles/p.yaml:4: profiles[0].gpu_memory_mib: a CPU-only profile has no GPU for it; "
            "add milli_gpu or gpus, or drop gpu_memory_mib",
        ),
        (
            ["gpu_models: [T4]"],
            "profiles/p.yaml:4: profiles[0].gpu_models: a CPU-only profile has no GPU for it; "
            "add milli_gpu or gpus, or drop gpu_models",
        ),
        (
            ["milli_gpu: 500", "gpu_models: [T4, L4, T4]"],
            "profiles/p.yaml:5: profiles[0].gpu_models[2]: 'T4' is listed twice; expected a non-empty list "
            "of distinct GPU model names (e.g. [A100-80GB])",
        ),
        (
            ["cpu_limit: 1", "cpu_guarantee: 2.5"],
            "profiles/p.yaml:5: profiles[0].cpu_guarantee: expected at most cpu_limit (1), got 2.5",
        ),
        (
            ["cpu_limit: 0"],
            "profiles/p.yaml:4: profiles[0].cpu_limit: expected a number of CPU cores > 0 "
            "(e.g. 2 or 0.5), got 0",
        ),
        (
            ["mem_limit: 1G", "mem_guarantee: 2G"],
            "profiles/p.yaml:5: profiles[0].mem_guarantee: expected at most mem_limit (1G), got '2G'",
        ),
        (
            ["mem_limit: 8GB"],
            "profiles/p.yaml:4: profiles[0].mem_limit: expected a size with a unit, e.g. 512M or 8G "
            "(K/M/G/T or Ki/Mi/Gi/Ti, binary multiples either way), got '8GB'",
        ),
        (
            ["mem_limit: 0G"],
            "profiles/p.yaml:4: profiles[0].mem_limit: expected a size > 0, got '0G'",
        ),
        (
            ["environment:", "  9LIVES: 'yes'"],
            "profiles/p.yaml:5: profiles[0].environment['9LIVES']: expected an environment variable name "
            "(letters, digits and '_', not starting with a digit), got '9LIVES'",
        ),
        (
            ["environment:", "  OMP_NUM_THREADS: 2"],
            "profiles/p.yaml:5: profiles[0].environment.OMP_NUM_THREADS: expected a string "
            '(quote values such as "1" or "true"), got 2',
        ),
        (
            ["groups: vision"],
            "profiles/p.yaml:4: profiles[0].groups: expected a list of distinct JupyterHub group names "
            "(empty or absent: everyone), got 'vision'",
        ),
        (
            ["default: yes please"],
            "profiles/p.yaml:4: profiles[0].default: expected true or false, got 'yes please'",
        ),
        (
            ["image: my image"],
            "profiles/p.yaml:4: profiles[0].image: expected a container image without spaces "
            "(e.g. quay.io/jupyter/pytorch-notebook:cuda12-latest), got 'my image'",
        ),
        (
            ["display_name: Again"],
            "profiles/p.yaml:4: profiles[0].display_name: given twice (first on line 3); "
            "the second would silently win",
        ),
    ],
)
def test_a_bad_field_is_named_with_its_line_and_what_was_expected(profiles_dir, lines, error):
    assert errors_in(profiles_dir("p.yaml", one_profile(*lines))) == [error]


def test_missing_and_malformed_slugs(profiles_dir):
    directory = profiles_dir(
        "p.yaml",
        """
        profiles:
          - display_name: No slug
          - slug: Big_GPU
            display_name: Bad slug
          - slug: ok
        """,
    )

    assert errors_in(directory) == [
        "profiles/p.yaml:2: profiles[0]: missing field 'slug'; expected a DNS-label-like name "
        "(lower-case letters, digits and '-', at most 63 characters, e.g. gpu-1-8)",
        "profiles/p.yaml:3: profiles[1].slug: expected a DNS-label-like name (lower-case letters, "
        "digits and '-', at most 63 characters, e.g. gpu-1-8), got 'Big_GPU'",
        "profiles/p.yaml:5: profiles[2]: missing field 'display_name'; "
        "expected a non-empty name for the dropdown",
    ]


def test_a_slug_used_in_two_files_names_both_places(profiles_dir):
    profiles_dir("a.yaml", GOOD_PROFILES)
    directory = profiles_dir(
        "b.yaml",
        """
        profiles:
          - slug: other
            display_name: Other
          - slug: gpu-1-8
            display_name: Same slug
        """,
    )

    assert errors_in(directory) == [
        "profiles/b.yaml:4: profiles[1].slug: slug 'gpu-1-8' is already used by "
        "profiles/a.yaml:9 (profiles[1]); expected a unique slug"
    ]


def test_a_second_default_names_the_first(profiles_dir):
    directory = profiles_dir(
        "p.yaml",
        """
        profiles:
          - {slug: a, display_name: A, default: true}
          - {slug: b, display_name: B, default: false}
          - {slug: c, display_name: C, default: true}
        """,
    )

    assert errors_in(directory) == [
        "profiles/p.yaml:4: profiles[2].default: only one profile may be the default, "
        "and profiles/p.yaml:2 (profiles[0]) already is"
    ]


def test_invalid_yaml_names_the_line(profiles_dir):
    directory = profiles_dir("p.yaml", "profiles:\n  - slug: a\n    display_name: [A\n")

    [error] = errors_in(directory)
    assert error.startswith("profiles/p.yaml:4: not valid YAML: ")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "",
            "profiles/p.yaml: expected a mapping with a 'profiles' list and/or a 'quotas' mapping, "
            "got nothing (null)",
        ),
        (
            "- slug: a\n",
            "profiles/p.yaml:1: expected a mapping with a 'profiles' list and/or a 'quotas' mapping, "
            "got a list",
        ),
        (
            "profile:\n  - {slug: a, display_name: A}\n",
            "profiles/p.yaml:1: profile: unknown field (did you mean 'profiles'?); "
            "expected one of: profiles, quotas, kubernetes",
        ),
        (
            "profiles: []\n",
            "profiles/p.yaml:1: profiles: expected a non-empty list of profiles, got an empty list",
        ),
    ],
)
def test_a_file_of_the_wrong_shape_says_what_a_file_holds(profiles_dir, text, error):
    profiles_dir("a.yaml", GOOD_PROFILES)
    assert errors_in(profiles_dir("p.yaml", text)) == [error]


@pytest.mark.parametrize(
    ("quotas", "error"),
    [
        (
            "  groups:\n    x:\n      interactive: {servers: -1}\n",
            "profiles/quotas.yaml:4: quotas.groups.x.interactive.servers: expected an integer >= 0 (notebook "
            "servers holding a GPU slice at once; leave it out for no limit), got -1",
        ),
        (
            "  defualt_user: {}\n",
            "profiles/quotas.yaml:2: quotas.defualt_user: unknown field (did you mean 'default_user'?); "
            "expected one of: groups, users, default_user, default_group",
        ),
        (
            "  users:\n    1234: {}\n",
            "profiles/quotas.yaml:3: quotas.users[1234]: expected a user or group name "
            "(quote names that look like numbers), got 1234",
        ),
        (
            "  default_user:\n    batch: {borrow: 2}\n",
            "profiles/quotas.yaml:3: quotas.default_user.batch.borrow: unknown field (did you mean "
            "'borrow_gpus'?); expected one of: guaranteed_gpus, borrow_gpus, running_jobs, "
            "gpu_hours_per_week",
        ),
        (
            "  default_user:\n    batch: {gpu_hours_per_week: lots}\n",
            "profiles/quotas.yaml:3: quotas.default_user.batch.gpu_hours_per_week: expected a number >= 0 "
            "(GPU-hours of batch jobs per week; leave it out for no limit), got 'lots'",
        ),
    ],
)
def test_a_bad_quota_is_named_with_its_line(profiles_dir, quotas, error):
    profiles_dir("a.yaml", GOOD_PROFILES)
    assert errors_in(profiles_dir("quotas.yaml", "quotas:\n" + quotas)) == [error]


def test_quotas_given_in_two_files_name_the_first(profiles_dir):
    profiles_dir("a.yaml", GOOD_PROFILES + "    quotas: {}\n")
    directory = profiles_dir("quotas.yaml", GOOD_QUOTAS)

    assert errors_in(directory) == [
        "profiles/quotas.yaml:1: quotas: quotas are already given in profiles/a.yaml:23 (quotas); "
        "keep every quota in one file"
    ]


def test_a_directory_without_profiles_says_where_they_belong(profiles_dir):
    directory = profiles_dir("quotas.yaml", GOOD_QUOTAS)
    profiles_dir("gpus.yaml", "nodes: []\n")

    assert errors_in(directory) == [
        "profiles: no profiles found; expected *.yaml files with a 'profiles:' list "
        "(gpus*.yaml files are the GPU inventory and hold no profiles)"
    ]


def test_a_missing_directory_is_named(tmp_path):
    missing = tmp_path / "nowhere"

    assert errors_in(str(missing)) == [
        f"{missing}: no such directory; expected a directory of profile *.yaml files"
    ]


def test_every_problem_of_every_file_is_reported_at_once_in_file_and_line_order(profiles_dir):
    profiles_dir(
        "b.yaml",
        """
        profiles:
          - {slug: cpu, display_name: CPU again, default: true}
          - {slug: huge, display_name: Huge, milli_gpu: 2000}
        """,
    )
    profiles_dir("a.yaml", GOOD_PROFILES.replace("cpu_limit: 2\n", "cpu_limit: x\n", 1))
    directory = profiles_dir("quotas.yaml", "quotas:\n  users: []\n")

    with pytest.raises(ProfileConfigError) as raised:
        load_profiles(directory)

    error = raised.value
    assert isinstance(error, ValueError)
    assert [line.split(": ")[0] for line in error.errors] == [
        "profiles/a.yaml:6",
        "profiles/b.yaml:2",
        "profiles/b.yaml:2",
        "profiles/b.yaml:3",
        "profiles/quotas.yaml:2",
    ]
    # The broken first 'cpu' still claims its slug and the default.
    assert error.errors[1] == (
        "profiles/b.yaml:2: profiles[0].slug: slug 'cpu' is already used by profiles/a.yaml:3 "
        "(profiles[0]); expected a unique slug"
    )
    assert str(error).startswith(
        "profiles: 5 problems in the profiles:\n  profiles/a.yaml:6: profiles[0].cpu_limit: "
    )


def test_a_broken_profile_does_not_hide_cross_file_problems_of_its_neighbours(profiles_dir):
    directory = profiles_dir(
        "p.yaml",
        """
        profiles:
          - {slug: a, display_name: A}
          - {slug: b, display_name: B, milli_gpu: 0}
          - {slug: a, display_name: A again}
        """,
    )

    assert errors_in(directory) == [
        "profiles/p.yaml:3: profiles[1].milli_gpu: expected an integer between 1 and 999 "
        "(use gpus: 1 for a whole GPU), got 0",
        "profiles/p.yaml:4: profiles[2].slug: slug 'a' is already used by profiles/p.yaml:2 (profiles[0]); "
        "expected a unique slug",
    ]


def test_quotas_given_twice_are_reported_even_when_the_first_is_broken(profiles_dir):
    profiles_dir("a.yaml", GOOD_PROFILES + "    quotas: {users: []}\n")
    directory = profiles_dir("quotas.yaml", GOOD_QUOTAS)

    assert errors_in(directory) == [
        "profiles/a.yaml:23: quotas.users: expected a mapping of names to quotas, got an empty list",
        "profiles/quotas.yaml:1: quotas: quotas are already given in profiles/a.yaml:23 (quotas); "
        "keep every quota in one file",
    ]
