"""The JupyterHub side of gpuslice: the spawner mixin, the local spawners, their options form, and
the client through which a spawner asks the service for its lease (profiles and quotas are loaded
by :mod:`spawner.config`, which the service shares)."""
