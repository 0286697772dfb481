"""deploy/z2jh/values.yaml's service command, read by the service itself: every argument is one it
takes, and it runs batch jobs as Kubernetes Jobs on the cluster's nodes."""

from __future__ import annotations

from pathlib import Path

import yaml

from spawner.service.app import GPUSliceService
from spawner.service.executor.kube import KubeJobExecutor

VALUES = Path(__file__).resolve().parents[2] / "deploy" / "z2jh" / "values.yaml"


def test_the_service_command_selects_the_job_executor_and_the_cluster_inventory():
    command = yaml.safe_load(VALUES.read_text())["hub"]["services"]["gpuslice"]["command"]
    assert command[:3] == ["python", "-m", "spawner.service"]
    # The chart substitutes $(VARIABLE) from the container's environment.
    argv = [argument.replace("$(GPUSLICE_LEDGER_URL)", "sqlite:///ledger.sqlite") for argument in command[3:]]
    service = GPUSliceService()
    service.parse_command_line(argv)
    # Every Class.trait named is one of the service's configurable classes (a typo would be ignored).
    known = {cls.__name__: cls for cls in [*service.classes, KubeJobExecutor]}
    for section, settings in service.config.items():
        assert section in known, section
        for trait in settings:
            assert trait in known[section].class_traits(config=True), f"{section}.{trait}"
    assert service.executor_class is KubeJobExecutor
    assert service.config.Inventory.source == "kubernetes"
