"""Hostile request bodies and headers end in a 4xx with the JSON error shape, never a 500.

PostgreSQL refuses NUL in text and JSONB, and a lone surrogate cannot be encoded as
UTF-8, so both used to reach the database and come back as 500s; deep nesting used to
raise RecursionError inside the JSON parser. These run in-process (the Django test
client); tests/api/test_bad_input_server.py sends the same kinds of input to a real
gunicorn, where chunked bodies and raw header bytes exist.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from kernel import context
from kernel.parsers import MAX_JSON_DEPTH
from llm.models import AITask

pytestmark = pytest.mark.django_db
URL = "/api/v1/ai-tasks/"
PROMPT = "Explain queues to a five year old."


def raw_client(tenant: Any) -> Client:
    """A client that answers 500s instead of raising them, so a test sees what a user sees."""
    return Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Bearer {tenant.issued.key}")


def post_raw(tenant: Any, body: str | bytes, **headers: Any) -> Any:
    return raw_client(tenant).post(URL, body, content_type="application/json", **headers)


def assert_client_error(response: Any, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body: dict[str, Any] = json.loads(response.content)
    assert body["type"] in {"client_error", "validation_error"}
    assert isinstance(body["code"], str) and body["code"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


# JSON text (escapes as a client sends them), not Python objects: the test client would
# otherwise refuse to encode a lone surrogate before the server ever saw it.
BAD_STRINGS = {
    "nul in a metadata value": f'{{"prompt": "{PROMPT}", "metadata": {{"a": "x\\u0000y"}}}}',
    "nul in a metadata key": f'{{"prompt": "{PROMPT}", "metadata": {{"a\\u0000": "y"}}}}',
    "nul deep in metadata": f'{{"prompt": "{PROMPT}", "metadata": {{"a": {{"b": ["ok", "\\u0000"]}}}}}}',
    "nul in a deep metadata key": f'{{"prompt": "{PROMPT}", "metadata": {{"a": [{{"\\u0000": 1}}]}}}}',
    "lone high surrogate in a metadata value": f'{{"prompt": "{PROMPT}", "metadata": {{"a": "\\ud800"}}}}',
    "lone low surrogate in a metadata key": f'{{"prompt": "{PROMPT}", "metadata": {{"\\udfff": 1}}}}',
    "surrogate deep in metadata": f'{{"prompt": "{PROMPT}", "metadata": {{"a": [[{{"b": "x\\udbff"}}]]}}}}',
    "nul in the prompt": '{"prompt": "hello \\u0000 world"}',
    "lone surrogate in the prompt": '{"prompt": "hello \\ud800 world"}',
    "reversed surrogate pair in the prompt": '{"prompt": "hello \\udc00\\ud800 world"}',
    "nul in the model": f'{{"prompt": "{PROMPT}", "model": "fake\\u0000"}}',
}


@pytest.mark.parametrize("body", BAD_STRINGS.values(), ids=BAD_STRINGS.keys())
def test_nul_and_lone_surrogates_anywhere_are_400(tenant, body: str) -> None:
    assert_client_error(post_raw(tenant, body))
    assert AITask.objects.count() == 0


def test_a_valid_surrogate_pair_is_an_ordinary_character(tenant) -> None:
    body = f'{{"prompt": "{PROMPT} \\ud83d\\ude80", "metadata": {{"\\ud83d\\ude80": "\\ud83d\\ude80"}}}}'
    response = post_raw(tenant, body)
    assert response.status_code == 202, response.content
    assert response.json()["metadata"] == {"\N{ROCKET}": "\N{ROCKET}"}


def nested(depth: int) -> str:
    """A JSON document whose containers nest ``depth`` deep, the top object included."""
    lists = depth - 2  # the top object and the metadata object
    return f'{{"prompt": "{PROMPT}", "metadata": {{"a": {"[" * lists}{"]" * lists}}}}}'


def test_json_nested_twenty_thousand_deep_is_400(tenant) -> None:
    body = "[" * 20_000 + "]" * 20_000
    assert len(body) == 40_000
    assert_client_error(post_raw(tenant, body))
    assert_client_error(post_raw(tenant, nested(20_000)))


def test_nesting_is_capped_at_the_limit(tenant) -> None:
    assert post_raw(tenant, nested(MAX_JSON_DEPTH)).status_code == 202
    body = assert_client_error(post_raw(tenant, nested(MAX_JSON_DEPTH + 1)))
    assert str(MAX_JSON_DEPTH) in body["detail"]
    assert AITask.objects.count() == 1


@pytest.mark.parametrize("body", ['{"prompt": NaN}', '{"prompt": Infinity}', b'{"prompt": "\xed\xa0\x80 x"}'])
def test_non_json_constants_and_invalid_utf8_are_400(tenant, body: str | bytes) -> None:
    assert_client_error(post_raw(tenant, body))


def test_ten_megabyte_prompt_is_413(tenant) -> None:
    body = json.dumps({"prompt": "x" * 10 * 1024 * 1024})
    body_json = assert_client_error(post_raw(tenant, body), 413)
    assert body_json["code"] == "body_too_large"
    assert str(settings.API_MAX_BODY_BYTES) in body_json["detail"]


# -- headers ---------------------------------------------------------------------------


def test_a_request_id_with_a_trailing_newline_is_refused_and_never_echoed(tenant) -> None:
    response = raw_client(tenant).get("/api/v1/me/", HTTP_X_REQUEST_ID="abc\n")
    assert assert_client_error(response)["code"] == "invalid_header"
    assert response["X-Request-ID"] != "abc\n"
    assert "\n" not in response["X-Request-ID"]
    # And on its own, the id check no longer lets `$` accept the newline.
    assert context.new_request_id("abc\n") != "abc\n"
    assert context.new_request_id("abc") == "abc"


@pytest.mark.parametrize(
    "value",
    ["a\x00b", "a\r\nSet-Cookie: owned=1", "a\nb", "\ud800", "\x7f"],
    ids=["nul", "crlf", "lf", "surrogate", "del"],
)
def test_control_characters_in_a_header_are_400(tenant, value: str) -> None:
    response = post_raw(tenant, json.dumps({"prompt": PROMPT}), HTTP_IDEMPOTENCY_KEY=value)
    assert assert_client_error(response)["code"] == "invalid_header"
    assert "Set-Cookie" not in response
    assert AITask.objects.count() == 0


def test_latin1_header_bytes_are_accepted(tenant) -> None:
    """A WSGI server decodes header bytes as latin-1: obs-text is legal, only controls are not."""
    response = post_raw(tenant, json.dumps({"prompt": PROMPT}), HTTP_IDEMPOTENCY_KEY="caf\xe9-1")
    assert response.status_code == 202, response.content


def test_the_error_names_where_the_bad_string_is_without_echoing_it(tenant) -> None:
    body = assert_client_error(post_raw(tenant, BAD_STRINGS["nul deep in metadata"]))
    assert body["code"] == "parse_error"
    assert "metadata.a.b.1" in body["detail"]
    body = assert_client_error(post_raw(tenant, BAD_STRINGS["lone low surrogate in a metadata key"]))
    assert "metadata.\\udfff" in body["detail"]


@pytest.mark.parametrize("param", ["status", "cursor", "limit"])
def test_an_empty_list_filter_is_400_not_ignored(tenant, param: str) -> None:
    """Found by tests/reliability/test_contract_fuzz.py: ``?status=`` listed every task."""
    body = assert_client_error(raw_client(tenant).get(f"{URL}?{param}="))
    assert [error["attr"] for error in body["errors"]] == [param]


# -- errors raised before a DRF view runs are JSON too -------------------------------------


def test_a_disallowed_host_is_a_json_400(tenant) -> None:
    response = raw_client(tenant).get("/api/v1/me/", HTTP_HOST="evil.example")
    assert assert_client_error(response)["code"] == "bad_request"


def test_too_many_query_parameters_is_a_json_400(tenant) -> None:
    query = "&".join(f"p{index}=1" for index in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1))
    assert assert_client_error(raw_client(tenant).get(f"/api/v1/me/?{query}"))["code"] == "bad_request"


def test_a_csrf_failure_outside_the_admin_is_a_json_403() -> None:
    """CSRF_FAILURE_VIEW answers API paths in the error format. (The SSE view, the one plain
    Django API view, is CSRF-exempt: Bearer keys, no cookies; other methods get a 405.)"""
    from django.test import RequestFactory

    from kernel.errors import csrf_failure

    response = csrf_failure(RequestFactory().post(f"{URL}{uuid.uuid4()}/"), reason="CSRF cookie not set.")
    assert assert_client_error(response, 403)["code"] == "csrf_failed"


def test_a_post_to_the_events_route_on_the_web_role_meets_no_csrf_page(tenant) -> None:
    client = Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {tenant.issued.key}")
    response = client.post(f"{URL}{uuid.uuid4()}/events/")
    assert assert_client_error(response, 421)["code"] == "use_stream_role"


def test_admin_errors_stay_html() -> None:
    response = Client(enforce_csrf_checks=True).post("/admin/login/", {"username": "x", "password": "y"})
    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/html")
