"""The images' Dockerfiles, read as Docker reads them (they cannot be built here: no engine).

Every ``COPY`` source exists in the build context (the repository root), every base image is
pinned (a dated or versioned tag, or a digest: never ``latest`` or no tag), both images build FROM
the same base (the runner refuses payloads pickled by another Python), and the trainer's entrypoint
is gpuslice's runner.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[2]
IMAGES = ("notebook", "trainer", "hub")
PINNED_TAG = re.compile(r"\d")
"""A tag that names a version or a date has a digit in it; ``latest``, ``cuda12-latest`` and
``python-3`` style moving tags are refused separately below."""
MOVING = re.compile(r"(^|-)(latest|stable|main|master)$")


def parsed(image: str) -> DockerfileParser:
    parser = DockerfileParser(path=str(REPO / "images" / image / "Dockerfile"))
    return parser


def instructions(image: str, name: str) -> list[dict]:
    return [step for step in parsed(image).structure if step["instruction"] == name]


@pytest.mark.parametrize("image", IMAGES)
def test_every_copy_source_exists_in_the_build_context(image):
    copies = instructions(image, "COPY")
    assert copies, f"images/{image}/Dockerfile copies nothing: the package would be missing"
    for step in copies:
        words = [word for word in step["value"].split() if not word.startswith("--")]
        for source in words[:-1]:
            assert (REPO / source).exists(), (
                f"images/{image}/Dockerfile:{step['startline'] + 1}: {source} missing"
            )


@pytest.mark.parametrize("image", IMAGES)
def test_base_images_are_pinned(image):
    for base in parsed(image).parent_images:
        name, _, digest = base.partition("@")
        tag = name.rpartition(":")[2] if ":" in name.rpartition("/")[2] else ""
        assert digest.startswith("sha256:") or (tag and PINNED_TAG.search(tag) and not MOVING.search(tag)), (
            f"images/{image}/Dockerfile: base image {base!r} is not pinned to a version, date or digest"
        )


def test_the_trainer_builds_from_the_notebooks_base_and_runs_the_runner():
    assert parsed("trainer").parent_images == parsed("notebook").parent_images
    (entrypoint,) = instructions("trainer", "ENTRYPOINT")
    argv = json.loads(entrypoint["value"])
    assert argv[-3:] == ["python", "-m", "spawner.service.runner"]
    assert argv[0] == "tini", "SIGTERM must reach the job: tini runs it as a child of PID 1"


def test_the_notebook_kernel_loads_the_slice_limits_and_the_magic():
    (kernel_copy,) = [step for step in instructions("notebook", "COPY") if "kernel.json" in step["value"]]
    source = kernel_copy["value"].split()[0]
    argv = json.loads((REPO / source).read_text())["argv"]
    assert "--IPKernelApp.extensions=spawner.enforce.kernel" in argv
    assert "--IPKernelApp.extra_extensions=spawner.magic" in argv
