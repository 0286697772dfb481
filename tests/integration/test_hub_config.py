"""hub_config.py as JupyterHub reads it: the settings an admin's environment variables make."""

from __future__ import annotations

import json

import pytest
from harness import REPO_ROOT
from harness.hub import TEST_CONFIG
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader


def load_hub_config(monkeypatch, tmp_path, **environment: str):
    monkeypatch.setenv("GPUSLICE_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("GPUSLICE_PASSWORD", "a-long-enough-password")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return PyFileConfigLoader("hub_config.py", path=str(REPO_ROOT)).load_config()


@pytest.mark.parametrize(
    ("spawner", "as_owner"), [("gpuslice-local", True), ("gpuslice-local-simple", False)]
)
def test_batch_jobs_run_as_the_same_account_as_the_owners_server(monkeypatch, tmp_path, spawner, as_owner):
    config = load_hub_config(monkeypatch, tmp_path, GPUSLICE_SPAWNER=spawner)
    assert config.JupyterHub.spawner_class == spawner
    (service,) = [entry for entry in config.JupyterHub.services if entry["name"] == "gpuslice"]
    assert ("--LocalExecutor.run_as_owner=True" in service["command"]) is as_owner


def test_every_server_token_may_call_the_service_so_that_submit_works_inside_it(monkeypatch, tmp_path):
    config = load_hub_config(monkeypatch, tmp_path)
    assert "access:services!service=gpuslice" in config.Spawner.server_token_scopes


def service_command(config) -> list[str]:
    (service,) = [entry for entry in config.JupyterHub.services if entry["name"] == "gpuslice"]
    return service["command"]


def test_by_default_the_inventory_splits_each_host_and_an_admin_can_say_otherwise(monkeypatch, tmp_path):
    command = service_command(load_hub_config(monkeypatch, tmp_path))
    assert not [arg for arg in command if arg.startswith(("--Inventory.train", "--config"))]
    command = service_command(load_hub_config(monkeypatch, tmp_path, GPUSLICE_TRAIN_GPUS="4,5, 6"))
    assert "--Inventory.train_gpu_indices=[4, 5, 6]" in command
    command = service_command(load_hub_config(monkeypatch, tmp_path, GPUSLICE_TRAIN_GPUS="none"))
    assert "--Inventory.train_share=0" in command


def test_a_service_config_file_reaches_the_service(monkeypatch, tmp_path):
    (tmp_path / "service.py").write_text("c.JobService.cancel_grace_seconds = 20\n")
    monkeypatch.chdir(tmp_path)
    command = service_command(load_hub_config(monkeypatch, tmp_path, GPUSLICE_SERVICE_CONFIG="service.py"))
    assert f"--config={tmp_path / 'service.py'}" in command


def load_test_hub_config(monkeypatch, overlay: dict | None) -> Config:
    """The config every test hub runs (tests/harness/hub_config_for_tests.py), with ``overlay``."""
    if overlay is None:
        monkeypatch.delenv("GPUSLICE_TEST_HUB", raising=False)
    else:
        monkeypatch.setenv("GPUSLICE_TEST_HUB", json.dumps(overlay))
    return PyFileConfigLoader(TEST_CONFIG.name, path=str(TEST_CONFIG.parent)).load_config()


def test_the_test_hubs_are_hub_config_py_itself_with_additions_only(monkeypatch, tmp_path):
    shipped = load_hub_config(monkeypatch, tmp_path, GPUSLICE_GROUPS="researchers=alice")
    assert load_test_hub_config(monkeypatch, None) == shipped

    extra_role = {"name": "gpuslice-admin", "scopes": ["custom:gpuslice:admin"], "users": ["erin"]}
    overlay = {
        "service_args": ["--BatchScheduler.interval_seconds=0.5"],
        "users": ["alice", "erin"],
        "roles": [extra_role],
        "admin_token": "a-test-admin-token",
    }
    tested = load_test_hub_config(monkeypatch, overlay)
    # The shipped roles, scopes and service, as they are, then only what the test added.
    assert tested.JupyterHub.custom_scopes == shipped.JupyterHub.custom_scopes
    roles = shipped.JupyterHub.load_roles
    assert tested.JupyterHub.load_roles == [*roles, extra_role, {"name": "admin", "services": ["test-admin"]}]
    (gpuslice,) = shipped.JupyterHub.services
    assert tested.JupyterHub.services == [
        {**gpuslice, "command": [*gpuslice["command"], "--BatchScheduler.interval_seconds=0.5"]},
        {"name": "test-admin", "api_token": "a-test-admin-token"},
    ]
    assert tested.JupyterHub.load_groups == shipped.JupyterHub.load_groups
    assert tested.Spawner == shipped.Spawner
    assert tested.GPUSliceSpawnerMixin == shipped.GPUSliceSpawnerMixin
    assert tested.JupyterHub.authenticator_class == "dummy"
    assert tested.Authenticator.allowed_users == {"alice", "erin"}
    assert tested.Authenticator.allow_all is False
