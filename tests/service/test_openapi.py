"""The OpenAPI document describes every API route the service serves, with every method."""

from __future__ import annotations

import json
import re
from importlib import resources

from tornado import web

from spawner.core.vocabulary import STATES
from spawner.service.api.jobs import (
    DEFAULT_LIST_LIMIT,
    FALSE_WORDS,
    MAX_LIST_LIMIT,
    MAX_LOG_OFFSET,
    TRUE_WORDS,
)
from spawner.service.app import routes
from spawner.service.job_request import JOB_BODY_SCHEMA
from spawner.service.lease_request import LEASE_BODY_SCHEMA

PREFIX = "/services/gpuslice/"
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def document() -> dict:
    return json.loads(resources.files("spawner.service").joinpath("openapi.json").read_text())


def app_rules() -> list[tuple[re.Pattern, type]]:
    app = web.Application(routes(PREFIX, hub_auth=None))
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


def serving_route(path: str, rules: list[tuple[re.Pattern, type]]) -> re.Pattern | None:
    """The route that serves a documented path: the first that matches it, as tornado routes a
    request (``jobs/batch`` comes before ``jobs/{job_id}``, which would match it too)."""
    return next((regex for regex, _ in rules if regex.fullmatch(concrete(path))), None)


def test_every_route_of_the_app_is_in_the_openapi_document_with_its_methods():
    paths = document()["paths"]
    rules = app_rules()
    for regex, handler in rules:
        described = [path for path in paths if serving_route(path, rules) is regex]
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


def resolved(node, spec: dict):
    """``node`` with every ``$ref`` replaced by what it names, and without the words for people
    (``description``) or the schema dialect (``$schema``): the rules that are left."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return resolved({**target, **{k: v for k, v in node.items() if k != "$ref"}}, spec)
        return {
            key: resolved(value, spec) for key, value in node.items() if key not in ("description", "$schema")
        }
    if isinstance(node, list):
        return [resolved(item, spec) for item in node]
    return node


def test_the_documented_bodies_are_the_schemas_the_service_checks():
    """What the document allows in POST jobs and POST leases is exactly what the service accepts
    (schemathesis found an empty cell/python and empty lease_id, user and holder allowed by the
    document and refused by the service)."""
    spec = document()
    schemas = spec["components"]["schemas"]
    assert resolved(schemas["JobBody"], spec) == resolved(JOB_BODY_SCHEMA, spec)
    assert resolved(schemas["LeaseBody"], spec) == resolved(LEASE_BODY_SCHEMA, spec)


def parameter(path: str, name: str) -> dict:
    operation = document()["paths"][path]
    parameters = operation.get("parameters", []) + operation.get("get", {}).get("parameters", [])
    (found,) = [parameter for parameter in parameters if parameter["name"] == name]
    return found["schema"]


def test_the_documented_query_parameters_are_what_the_service_takes():
    assert parameter("/jobs", "state") == {"type": "array", "items": {"type": "string", "enum": list(STATES)}}
    flags = {"type": "string", "enum": list(TRUE_WORDS + FALSE_WORDS)}
    assert parameter("/jobs", "all") == flags
    assert parameter("/jobs/{job_id}/logs", "follow") == flags
    limit = parameter("/jobs", "limit")
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, MAX_LIST_LIMIT, DEFAULT_LIST_LIMIT)
    assert parameter("/jobs/{job_id}/logs", "offset") == {
        "type": "integer",
        "minimum": 0,
        "maximum": MAX_LOG_OFFSET,
    }
