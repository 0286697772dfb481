"""Kubernetes mode: manifests (ordinary tests) and the spawner and Job executor on a real control plane."""
