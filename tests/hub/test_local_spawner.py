"""``LocalGPUSpawner`` and the shared server's state directory, without a hub.

The whole shared server (servers and jobs as system users) runs in
tests/integration/test_shared_server.py; these are the refusals and file modes it relies on.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from spawner.hub.local import LocalGPUSpawner, ensure_home, prepare_shared_state_dir, sqlite_file
from spawner.hub.mixin import SpawnRefused

NOBODY = pwd.getpwnam("nobody")


def spawner_for(name: str) -> LocalGPUSpawner:
    spawner = LocalGPUSpawner()
    spawner.user = SimpleNamespace(name=name)
    return spawner


def test_a_user_without_a_system_account_is_told_so_before_any_slice_is_asked_for():
    with pytest.raises(SpawnRefused) as refused:
        asyncio.run(spawner_for("no-such-account-here").start())
    assert refused.value.reason == "no-system-account" and refused.value.status_code == 403
    assert "no system account 'no-such-account-here'" in refused.value.jupyterhub_message


@pytest.mark.parametrize("account", ["root", "daemon", "nobody"])
def test_system_accounts_get_no_server_unless_the_admin_lowers_min_uid(account):
    with pytest.raises(SpawnRefused) as refused:
        asyncio.run(spawner_for(account).start())
    assert refused.value.reason == "system-account", refused.value.jupyterhub_message
    assert "LocalGPUSpawner.min_uid" in refused.value.jupyterhub_message


def test_allow_root_only_for_a_server_that_runs_as_root():
    assert spawner_for("root").runs_as_root()
    assert not spawner_for("nobody").runs_as_root()  # even though the hub here may be root


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another account needs root")
def test_a_missing_home_is_made_private_to_its_account_and_an_existing_one_is_left_alone(tmp_path):
    home = tmp_path / "home" / "ada"
    account = pwd.struct_passwd(("ada", "x", NOBODY.pw_uid, NOBODY.pw_gid, "", str(home), "/bin/sh"))
    assert ensure_home(account)
    info = home.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (NOBODY.pw_uid, NOBODY.pw_gid, 0o700)
    home.chmod(0o750)
    assert not ensure_home(account)
    assert stat.S_IMODE(home.stat().st_mode) == 0o750


def test_sqlite_files_are_found_in_database_urls():
    assert sqlite_file("sqlite:////var/lib/gpuslice/gpuslice.sqlite") == Path(
        "/var/lib/gpuslice/gpuslice.sqlite"
    )
    assert sqlite_file("sqlite:///relative.sqlite?timeout=5") == Path("relative.sqlite")
    assert sqlite_file("sqlite://") is None
    assert sqlite_file("postgresql+psycopg://gpuslice@db/gpuslice") is None


def test_the_shared_state_directory_is_passable_and_its_databases_private(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    (state / "jupyterhub.sqlite").write_bytes(b"")
    (state / "jupyterhub.sqlite").chmod(0o644)  # as an earlier hub with umask 022 left it
    (state / "jupyterhub.sqlite-wal").write_bytes(b"")
    (state / "jupyterhub.sqlite-wal").chmod(0o644)
    blocked = prepare_shared_state_dir(
        state,
        state / "job-scripts",
        [f"sqlite:///{state / 'jupyterhub.sqlite'}", f"sqlite:///{state / 'gpuslice.sqlite'}", "sqlite://"],
    )

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.lstat().st_mode)

    assert mode(state) == 0o711 and mode(state / "job-scripts") == 0o711
    assert (state / "gpuslice.sqlite").stat().st_size == 0  # made empty, before the service makes it
    for name in ("jupyterhub.sqlite", "jupyterhub.sqlite-wal", "gpuslice.sqlite"):
        assert mode(state / name) == 0o600, name
    # Every parent another account cannot pass through is named (pytest's own folder is 0700).
    expected = [str(parent) for parent in state.resolve().parents if not parent.stat().st_mode & 0o001]
    assert [entry.split(" (mode ")[0] for entry in blocked] == expected


def test_a_database_link_is_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("not a database")
    target.chmod(0o644)
    (tmp_path / "gpuslice.sqlite").symlink_to(target)
    with pytest.raises(OSError):
        prepare_shared_state_dir(
            tmp_path, tmp_path / "job-scripts", [f"sqlite:///{tmp_path / 'gpuslice.sqlite'}"]
        )
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
