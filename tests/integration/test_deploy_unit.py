"""deploy/jupyterhub-gpuslice.service: a unit systemd accepts, running what the README installs.

The unit is read by a small parser of its own rather than configparser, which keeps only one of
the repeated keys systemd allows (``Environment=`` here); ``systemd-analyze verify`` checks it too
where systemd is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import REPO_ROOT

from spawner.hub.local import SHARED_STATE_DIR_MODE

UNIT = REPO_ROOT / "deploy" / "jupyterhub-gpuslice.service"
README_SECTION = "## A shared GPU server (servers as system users)"


def unit_sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """``{section: [(key, value), ...]}`` in file order, repeated keys kept."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            current = sections.setdefault(stripped[1:-1], [])
            continue
        assert current is not None, f"{UNIT.name}:{number}: a setting outside any section: {line!r}"
        key, equals, value = stripped.partition("=")
        assert equals and re.fullmatch(r"[A-Za-z]+", key), f"{UNIT.name}:{number}: not key=value: {line!r}"
        current.append((key, value))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [value for name, value in section if name == key]


def readme_section() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index(README_SECTION)
    return text[start : text.index("\n## ", start + 1)]


def test_the_unit_runs_the_shared_server_and_a_restart_keeps_the_jobs():
    sections = unit_sections(UNIT.read_text())
    assert set(sections) == {"Unit", "Service", "Install"}
    service = sections["Service"]
    assert values(service, "User") == ["root"]  # only root starts processes as other accounts
    assert values(service, "KillMode") == ["process"]  # a restart signals the hub alone
    environment = dict(entry.split("=", 1) for entry in values(service, "Environment"))
    assert environment["GPUSLICE_SPAWNER"] == "gpuslice-local"
    assert environment["GPUSLICE_KEEP_SERVERS"] == "1"
    # systemd makes the state directory, with the mode the hub would give it.
    assert environment["GPUSLICE_STATE_DIR"] == "/var/lib/" + values(service, "StateDirectory")[0]
    assert int(values(service, "StateDirectoryMode")[0], 8) == SHARED_STATE_DIR_MODE
    assert values(service, "WorkingDirectory") == [environment["GPUSLICE_STATE_DIR"]]
    assert values(sections["Install"], "WantedBy") == ["multi-user.target"]


def test_every_setting_of_the_unit_says_why():
    previous = ""
    for number, line in enumerate(UNIT.read_text().splitlines(), 1):
        if line and not line.startswith(("#", "[")):
            # a setting: right under its comment, or under a setting that shares it (After, Wants)
            assert previous.startswith("#") or (previous and not previous.startswith("[")), (
                f"{UNIT.name}:{number}: {line!r} has no comment"
            )
        previous = line


def test_the_units_exec_start_is_what_the_readme_installs():
    (exec_start,) = values(unit_sections(UNIT.read_text())["Service"], "ExecStart")
    section = readme_section()
    assert f"\n{exec_start}\n" in section, f"the README's shared-server section does not show {exec_start!r}"
    jupyterhub, option, config = exec_start.split()
    assert option == "-f" and jupyterhub.endswith("/bin/jupyterhub") and config.endswith("/hub_config.py")
    venv, checkout = jupyterhub.removesuffix("/bin/jupyterhub"), config.removesuffix("/hub_config.py")
    assert f"python3 -m venv {venv} " in section
    assert f"git clone <this repository> {checkout}\n" in section
    assert f"{venv}/bin/pip install {checkout}\n" in section
    (documentation,) = values(unit_sections(UNIT.read_text())["Unit"], "Documentation")
    assert documentation == f"file://{checkout}/deploy/README.md"


def test_systemd_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package); the unit is parsed above")
    text = UNIT.read_text()
    (exec_start,) = values(unit_sections(text)["Service"], "ExecStart")
    executable = exec_start.split()[0]
    if not Path(executable).exists():
        # verify insists that the command exists; the installed venv is not on a test machine.
        text = text.replace(f"ExecStart={executable} ", f"ExecStart={shutil.which('true')} ")
    (tmp_path / UNIT.name).write_text(text)
    checked = subprocess.run(
        [analyze, "verify", str(tmp_path / UNIT.name)], capture_output=True, text=True, timeout=60
    )
    said = [line for line in (checked.stdout + checked.stderr).splitlines() if UNIT.name in line]
    assert checked.returncode == 0 and not said, checked.stdout + checked.stderr
