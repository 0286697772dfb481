"""deploy/z2jh: the RBAC objects validate against Kubernetes 1.37, and the chart values name what exists."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import kubernetes_validate
import yaml

from spawner.hub.kube import KubeGPUSpawner
from spawner.service.executor.kube import KubeJobExecutor

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "z2jh"


def test_the_rbac_objects_are_valid_and_grant_what_the_executor_and_inventory_use():
    objects = list(yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()))
    for manifest in objects:
        kubernetes_validate.validate(manifest, "1.37.0", strict=True)
    rules = {
        (resource, verb)
        for manifest in objects
        if manifest["kind"] in ("Role", "ClusterRole")
        for rule in manifest["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    needed = {("jobs", verb) for verb in ("get", "list", "watch", "create", "patch", "delete")}
    needed |= {("pods", "list"), ("pods", "delete"), ("pods/log", "get")}
    needed |= {("nodes", verb) for verb in ("get", "list", "watch")}
    assert needed <= rules


def test_the_values_start_kubegpuspawner_and_configure_only_real_traits():
    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    name = values["hub"]["config"]["JupyterHub"]["spawner_class"]
    (entry,) = [entry for entry in entry_points(group="jupyterhub.spawners") if entry.name == name]
    assert entry.load() is KubeGPUSpawner
    for trait in values["hub"]["config"]["KubeGPUSpawner"]:
        assert KubeGPUSpawner.class_traits(config=True).get(trait), trait
    executor_traits = KubeJobExecutor.class_traits(config=True)
    for argument in values["hub"]["services"]["gpuslice"]["command"]:
        if argument.startswith("--KubeJobExecutor."):
            trait = argument.removeprefix("--KubeJobExecutor.").partition("=")[0]
            assert trait in executor_traits, argument
