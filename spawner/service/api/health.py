"""Endpoints without a token: the health check and the API's own description (``openapi.json``)."""

from __future__ import annotations

from importlib import resources

from .base import PublicHandler


class HealthHandler(PublicHandler):
    async def get(self) -> None:
        self.finish({"status": "ok"})


class OpenAPIHandler(PublicHandler):
    async def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(resources.files("spawner.service").joinpath("openapi.json").read_text())


default_handlers = [
    ("health", HealthHandler),
    ("openapi.json", OpenAPIHandler),
]
