"""``gpuslice profiles check`` and ``gpuslice profiles list``: output and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spawner import cli

from .conftest import REPO_PROFILES


def test_check_reports_counts_and_exits_0(good_dir, capsys):
    assert cli.main(["profiles", "check", good_dir]) == 0

    out, err = capsys.readouterr()
    assert out == "ok: 3 profiles, 3 quota entries in profiles\n"
    assert err == ""


def test_check_prints_every_problem_to_stderr_and_exits_1(profiles_dir, capsys):
    directory = profiles_dir(
        "p.yaml",
        """
        profiles:
          - {slug: a, display_name: A, milli_gpu: 1500}
          - {slug: a, display_name: B, mem_limit: 8 GB}
        """,
    )

    assert cli.main(["profiles", "check", directory]) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "profiles/p.yaml:2: profiles[0].milli_gpu: expected an integer between 1 and 999 "
        "(use gpus: 1 for a whole GPU), got 1500",
        "profiles/p.yaml:3: profiles[1].mem_limit: expected a size with a unit, e.g. 512M or 8G "
        "(K/M/G/T or Ki/Mi/Gi/Ti, binary multiples either way), got '8 GB'",
        "profiles/p.yaml:3: profiles[1].slug: slug 'a' is already used by profiles/p.yaml:2 (profiles[0]); "
        "expected a unique slug",
        "gpuslice profiles: 3 problems in profiles",
    ]


def test_check_without_a_directory_reads_profiles_in_the_working_directory(good_dir, capsys):
    assert cli.main(["profiles", "check"]) == 0

    assert capsys.readouterr().out == "ok: 3 profiles, 3 quota entries in profiles\n"


def test_check_without_a_local_profiles_directory_reads_the_shipped_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    assert cli.main(["profiles", "check"]) == 0

    assert capsys.readouterr().out == f"ok: 6 profiles, 2 quota entries in {REPO_PROFILES}\n"


def test_list_prints_a_table_of_slices_and_groups(good_dir, capsys):
    assert cli.main(["profiles", "list", good_dir]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["slug", "display", "name", "milli-GPU", "whole", "GPUs", "groups"]
    assert set(lines[1]) == {"-", " "}
    assert [line.split("  ")[0] for line in lines[2:]] == ["cpu", "gpu-1-8", "train-2"]
    assert lines[2].split() == ["cpu", "CPU", "only", "-", "-", "everyone"]
    assert lines[3].split() == ["gpu-1-8", "1/8", "A100", "125", "-", "nlp,", "vision"]
    assert lines[4].split() == ["train-2", "Two", "GPUs", "for", "training", "-", "2", "everyone"]
    # Columns line up: every row starts its milli-GPU cell where the header does.
    column = lines[0].index("milli-GPU")
    assert [line[column] for line in lines[2:]] == ["-", "1", "-"]


def test_list_json_gives_one_object_per_profile(good_dir, capsys):
    assert cli.main(["profiles", "list", good_dir, "--json"]) == 0

    assert json.loads(capsys.readouterr().out) == [
        {"slug": "cpu", "display_name": "CPU only", "milli_gpu": 0, "gpus": 0, "groups": []},
        {
            "slug": "gpu-1-8",
            "display_name": "1/8 A100",
            "milli_gpu": 125,
            "gpus": 0,
            "groups": ["nlp", "vision"],
        },
        {"slug": "train-2", "display_name": "Two GPUs for training", "milli_gpu": 0, "gpus": 2, "groups": []},
    ]


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_list_of_a_bad_directory_prints_the_problems_and_exits_1(profiles_dir, capsys, extra):
    directory = profiles_dir("p.yaml", "profiles:\n  - {slug: a}\n")

    assert cli.main(["profiles", "list", directory, *extra]) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "profiles/p.yaml:2: profiles[0]: missing field 'display_name'; "
        "expected a non-empty name for the dropdown",
        "gpuslice profiles: 1 problem in profiles",
    ]


def test_the_installed_command_checks_the_shipped_profiles():
    command = Path(sys.executable).with_name("gpuslice")

    result = subprocess.run(
        [str(command), "profiles", "check", "profiles"],
        cwd=REPO_PROFILES.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "ok: 6 profiles, 2 quota entries in profiles\n"
