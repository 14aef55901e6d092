"""Bad input, generated: schemathesis against contracts/openapi.yaml, every operation.

Each operation gets a bounded number of generated requests, valid ones (positive) and
ones the schema forbids (negative), sent authenticated to the WSGI application in-process
(no server, no network). Every answer must be a non-5xx and, where the contract documents
its status, match the documented body. Deterministic (a fixed seed per operation, no
example database), so a failure reproduces. Requests the schema forbids must be refused
(negative_data_rejection): nothing invalid is accepted. The pin and the choice of checks are
recorded in docs/decisions/contract-fuzzing.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.management import call_command
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import negative_data_rejection, response_schema_conformance

from billing import services as billing
from config.wsgi import application
from tests.support import ROOT
from users import services as users

# Per operation, positive and negative together: the module runs in about 10 s. A longer,
# random exploration: FUZZ_EXAMPLES=400 FUZZ_RANDOM=1 pytest tests/reliability/test_contract_fuzz.py
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))

schema = schemathesis.openapi.from_path(ROOT / "contracts" / "openapi.yaml")
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=MAX_EXAMPLES,
    deterministic=os.environ.get("FUZZ_RANDOM") != "1",
    database="none",
    # Unknown query parameters are ignored by design (cache busters, tracing): not invalid input.
    allow_extra_parameters=False,
)


@pytest.fixture(scope="module")
def api_key(django_db_setup: None, django_db_blocker: Any) -> Iterator[str]:
    """A committed key: the SSE view authenticates on a connection of its own."""
    with django_db_blocker.unblock():
        billing.price_catalog_seed()
        key = users.api_key_create(email="fuzz@switchyard.test", organization_name="Fuzz").key
    try:
        yield key
    finally:
        with django_db_blocker.unblock():
            call_command("flush", interactive=False, verbosity=0)
            billing.price_catalog_seed()


@pytest.fixture
def app() -> Iterator[Any]:
    """The WSGI application, minus what Django's test client also switches off: closing
    the database connection at the end of each request would end the test's transaction."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield application
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), max_examples=MAX_EXAMPLES)
def test_every_operation_answers_within_its_contract(case: schemathesis.Case, api_key: str, app: Any, db: None) -> None:
    response = case.call(app=app, headers={"Authorization": f"Bearer {api_key}"})
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance, negative_data_rejection])
