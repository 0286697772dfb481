"""jupyterhub-gpuslice: fractional GPU slices for JupyterHub servers and a training queue beside them."""

__version__ = "0.1.0"
