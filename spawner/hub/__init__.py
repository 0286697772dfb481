"""The JupyterHub side of gpuslice: profiles and quotas loading, and the spawners that use them."""
