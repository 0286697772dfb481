"""The OpenAPI document describes every API route the service serves, with every method."""

from __future__ import annotations

import json
import re
from importlib import resources

from tornado import web

from spawner.service.handlers import handlers

PREFIX = "/services/gpuslice/"
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def document() -> dict:
    return json.loads(resources.files("spawner.service").joinpath("openapi.json").read_text())


def app_rules() -> list[tuple[re.Pattern, type]]:
    app = web.Application(
        handlers(
            PREFIX,
            {
                "allocator": None,
                "hub_auth": None,
                "service_name": "gpuslice",
                "admin_scope": "custom:gpuslice:admin",
                "hub_admins_are_admins": True,
            },
        )
    )
    # The web pages (jobs, admin, OAuth callback, static files) are for browsers, not the API.
    return [
        (rule.matcher.regex, rule.target)
        for rule in app.wildcard_router.rules
        if "api/v1/" in rule.matcher.regex.pattern
    ]


def concrete(path: str) -> str:
    """An OpenAPI path with each parameter filled in, as a request would send it."""
    return PREFIX + "api/v1" + re.sub(r"\{\w+\}", "some-value", path)


def implemented_methods(handler: type) -> set[str]:
    return {
        method
        for method in HTTP_METHODS
        if getattr(handler, method) is not getattr(web.RequestHandler, method)
    }


def test_every_route_of_the_app_is_in_the_openapi_document_with_its_methods():
    paths = document()["paths"]
    for regex, handler in app_rules():
        described = [path for path in paths if regex.fullmatch(concrete(path))]
        assert len(described) == 1, f"route {regex.pattern} is described by {described}"
        documented = {method for method in paths[described[0]] if method in HTTP_METHODS}
        assert documented == implemented_methods(handler), (described[0], handler.__name__)


def test_every_path_of_the_openapi_document_is_served():
    rules = app_rules()
    for path in document()["paths"]:
        assert any(regex.fullmatch(concrete(path)) for regex, _ in rules), path


def test_the_document_is_openapi_3_1_and_its_references_resolve():
    spec = document()
    assert spec["openapi"] == "3.1.0"
    text = json.dumps(spec)
    for reference in set(re.findall(r'"\$ref": "#/([^"]+)"', text)):
        node = spec
        for part in reference.split("/"):
            assert part in node, reference
            node = node[part]
