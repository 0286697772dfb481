"""Start-up checks of ``python -m spawner.service`` that need no hub."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness import REPO_ROOT, free_port


def run_service(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "spawner.service",
        f"--ledger-url=sqlite:///{tmp_path / 'ledger.sqlite'}",
        "--Inventory.source=simulated",
        f"--GPUSliceService.service_url=http://127.0.0.1:{free_port()}",
        *args,
    ]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def test_a_bad_profiles_dir_stops_the_service_with_every_mistake(tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "default.yaml").write_text(
        "profiles:\n  - slug: Not A Slug\n    display_name: x\n    gpus: -1\n"
    )
    finished = run_service(tmp_path, f"--profiles-dir={profiles}")
    assert finished.returncode == 1, finished.stderr
    assert "gpuslice service cannot start" in finished.stderr
    assert f"{profiles}/default.yaml:2" in finished.stderr
    assert "slug" in finished.stderr and "gpus" in finished.stderr


def test_a_missing_profiles_dir_stops_the_service(tmp_path):
    finished = run_service(tmp_path, f"--profiles-dir={tmp_path / 'nowhere'}")
    assert finished.returncode == 1
    assert "no such directory" in finished.stderr
