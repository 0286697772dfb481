"""The REST API, under ``<service prefix>api/v1/``: one module per resource, as in JupyterHub's
``apihandlers/``; each ends in its ``default_handlers``, gathered here for ``app.py`` to mount."""

from __future__ import annotations

from . import availability, gpus, health, jobs, leases, metrics, notices, usage
from .base import API_PREFIX, APIHandler, NotFoundHandler, route_pattern

default_handlers: list[tuple[str, type]] = []
"""API paths below ``api/v1/``, as the OpenAPI document writes them, with their handlers."""
for _module in (health, gpus, availability, leases, jobs, metrics, usage, notices):
    default_handlers.extend(_module.default_handlers)

__all__ = ["API_PREFIX", "APIHandler", "NotFoundHandler", "default_handlers", "route_pattern"]
