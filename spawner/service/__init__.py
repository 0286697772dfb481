"""The companion JupyterHub service: the one owner of the ledger, and its REST API.

The spawner, the magic and the CLI are its clients (DESIGN.md, the one-scheduler principle); the
service is started by the hub as a managed service and served at ``/services/gpuslice/``.
"""
