"""Schemathesis against the ``openapi.json`` the service serves: no 500, and no answer the document
does not describe.

Every operation of the document is called with cases generated from it, valid ones and ones the
document forbids (which must be refused with a 4xx), once with a user's token and once with an
admin's, and each answer is checked by schemathesis' conformance checks: no server error, a
documented status, the documented content type, a body that matches the documented schema, and
no forbidden input accepted. It runs against a hub of its own (a real hub and the real service it
manages, as the other tests of this directory start them) whose scheduler makes no passes, so the
jobs it queues never run.

Bounded: a fixed, small number of examples per operation and a deadline per example, derandomized
so that a failure reproduces; the whole run takes well under a minute on two cores.
"""

from __future__ import annotations

import time
from importlib import resources

import pytest
import schemathesis
from harness.service_hubs import service_hub
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.slow

EXAMPLES = 30
"""Examples per operation and generation mode (positive and negative)."""
DEADLINE_MS = 5000
"""The longest one example may take: two calls, each a round trip through the proxy and the hub's
token check (the first call of a token is the slowest)."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
SERVICE_ARGS = " ".join(
    [
        "--LeaseReconciler.grace_seconds=3600",
        # One pass at start and none after: the jobs the cases queue never run.
        "--BatchScheduler.interval_seconds=0",
        "--JobService.log_follow_seconds=0.2",
    ]
)

# The document the service serves (OpenAPIHandler reads this file), loaded when the tests are collected.
SCHEMA = schemathesis.openapi.from_path(str(resources.files("spawner.service").joinpath("openapi.json")))
# The token is the test's to send (a user's, then an admin's), not an input to vary: a case without
# it would be a test of the hub's authentication, which tests/service/test_api.py does.
SCHEMA.config.generation.update(with_security_parameters=False)
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


def can_be_sent_wrong(operation) -> bool:
    """Whether the document forbids some input of the operation: it takes a body, or a parameter
    narrower than any string (an id in the path, or ?user=, is any string, so it has no wrong value)."""
    path_item = SCHEMA.raw_schema["paths"][operation.path]
    definition = path_item[operation.method.lower()]
    parameters = [*path_item.get("parameters", ()), *definition.get("parameters", ())]
    narrow = [parameter for parameter in parameters if parameter["schema"] != {"type": "string"}]
    return bool(narrow or definition.get("requestBody"))


CASES = [
    pytest.param(operation, mode, id=f"{operation.label} {mode.value}")
    for operation in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or can_be_sent_wrong(operation)
]


@pytest.fixture(scope="module")
def fuzzed_hub(tmp_path_factory):
    hub = service_hub(tmp_path_factory.mktemp("schemathesis-hub"), service_args=SERVICE_ARGS.split())
    try:
        hub.start()
        # A user, and an admin of the service (erin holds its admin scope).
        hub.tokens = {user: hub.token_for(user) for user in ("alice", "erin")}
    except Exception:
        hub.stop()
        raise
    started = time.monotonic()
    yield hub
    print(f"\nschemathesis: {time.monotonic() - started:.1f} s for {len(OPERATIONS)} operations")
    hub.stop()


@pytest.mark.parametrize(("operation", "mode"), CASES)
def test_every_operation_answers_as_the_document_says(operation, mode, fuzzed_hub):
    base_url = fuzzed_hub.api.rstrip("/")

    @settings(
        max_examples=EXAMPLES,
        deadline=DEADLINE_MS,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def answers_as_documented(case):
        for token in fuzzed_hub.tokens.values():
            case.call_and_validate(
                base_url=base_url, headers={"Authorization": f"token {token}"}, checks=CHECKS, timeout=30
            )

    answers_as_documented()
