"""Bad input, generated: schemathesis against contracts/openapi.yaml, every operation.

Each operation gets a bounded number of generated requests, valid ones (positive) and
ones the schema forbids (negative), sent authenticated to the WSGI application in-process
(no server, no network); the async SSE view goes through Django's ASGI handler instead,
as the stream role serves it. Every answer must be a non-5xx and, where the contract documents
its status, match the documented body. Deterministic (a fixed seed per operation, no
example database), so a failure reproduces. Requests the schema forbids must be refused
(negative_data_rejection): nothing invalid is accepted. The pin and the choice of checks are
recorded in docs/decisions/contract-fuzzing.md.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import schemathesis
from asgiref.sync import async_to_sync, iscoroutinefunction
from django.core import signals
from django.core.management import call_command
from django.db import close_old_connections
from django.test import AsyncClient
from django.urls import Resolver404, resolve
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import negative_data_rejection, response_schema_conformance
from schemathesis.transport.wsgi import WSGI_TRANSPORT

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


def _is_async_view(path: str) -> bool:
    try:
        return iscoroutinefunction(resolve(path).func)
    except Resolver404:
        return False


def call_asgi(case: schemathesis.Case, headers: dict[str, str]) -> httpx.Response:
    """Send ``case`` through Django's ASGI handler, as the stream role serves an async view
    (the SSE one), and hand schemathesis the answer as an httpx response."""
    request = WSGI_TRANSPORT.serialize_case(case, headers=headers)
    query = urlencode(request.get("query_string") or {}, doseq=True)
    path = request["path"] + (f"?{query}" if query else "")
    sent = dict(request["headers"])
    content_type = sent.pop("Content-Type", "application/octet-stream")
    body = json.dumps(request["json"]) if "json" in request else request.get("data") or b""

    async def send() -> tuple[int, list[tuple[str, str]], bytes]:
        # Headers per request: AsyncClient(headers=...) would put them in the scope itself.
        response: Any = await AsyncClient().generic(case.method, path, body, content_type=content_type, headers=sent)
        if response.streaming:
            content = b"".join([chunk async for chunk in response.streaming_content])
        else:
            content = response.content
        return response.status_code, list(response.items()), content

    started = time.monotonic()
    status, response_headers, content = async_to_sync(send)()
    response = httpx.Response(
        status, headers=response_headers, content=content, request=httpx.Request(case.method, f"http://localhost{path}")
    )
    response.elapsed = timedelta(seconds=time.monotonic() - started)
    return response


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), max_examples=MAX_EXAMPLES)
def test_every_operation_answers_within_its_contract(case: schemathesis.Case, api_key: str, app: Any, db: None) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}
    asgi = _is_async_view(case.formatted_path)
    response = call_asgi(case, headers) if asgi else case.call(app=app, headers=headers)
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance, negative_data_rejection])
