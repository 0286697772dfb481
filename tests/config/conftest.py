"""Fixtures for the profile tests: a profiles directory written under a fresh working directory."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

REPO_PROFILES = Path(__file__).resolve().parents[2] / "profiles"


def yaml_text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


@pytest.fixture
def profiles_dir(tmp_path, monkeypatch):
    """Write files into ``profiles/`` under a fresh working directory.

    ``write(name, text)`` writes one file (text is dedented) and returns ``"profiles"``, the
    relative path that error messages then start with.
    """
    monkeypatch.chdir(tmp_path)
    (tmp_path / "profiles").mkdir()

    def write(name: str, text: str) -> str:
        (tmp_path / "profiles" / name).write_text(yaml_text(text))
        return "profiles"

    return write


GOOD_PROFILES = """
    # two profiles, with comments so that lines are not trivially the item number
    profiles:
      - slug: cpu
        display_name: CPU only
        default: true
        cpu_limit: 2
        mem_limit: 8G

      - slug: gpu-1-8
        display_name: 1/8 A100
        description: An eighth of an A100.
        milli_gpu: 125
        gpu_memory_mib: 10240
        gpu_models: [A100-80GB]
        cpu_guarantee: 0.5
        cpu_limit: 2
        mem_guarantee: 1.5Gi
        mem_limit: 8G
        image: example.org/pytorch:1
        environment:
          OMP_NUM_THREADS: "2"
        groups: [vision, nlp]
"""

GOOD_MORE_PROFILES = """
    profiles:
      - slug: train-2
        display_name: Two GPUs for training
        gpus: 2
        pool: train
"""

GOOD_QUOTAS = """
    quotas:
      default_user:
        interactive: {servers: 2}
      groups:
        researchers:
          interactive:
            servers: 8
            milli_gpu: 4000
          batch:
            guaranteed_gpus: 2
            borrow_gpus: 4
            running_jobs: 3
            gpu_hours_per_week: 100.5
      users:
        alice:
          batch: {running_jobs: 1}
"""


@pytest.fixture
def good_dir(profiles_dir):
    """A valid directory: two profile files, the quotas, and a GPU inventory that must be skipped."""
    profiles_dir("a.yaml", GOOD_PROFILES)
    profiles_dir("b.yaml", GOOD_MORE_PROFILES)
    profiles_dir("quotas.yaml", GOOD_QUOTAS)
    return profiles_dir("gpus.yaml", "nodes: []\n")
