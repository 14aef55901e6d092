"""One JSON error shape for the whole API (SPEC §4): ``{"type", "code", "detail", "errors"?}``.

The views below exist only for these tests and are served by this module as the
URLconf (with the real routes and error handlers of config.urls behind them).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.test import Client
from django.urls import path
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIClient
from rest_framework.views import APIView

from config import urls as config_urls
from kernel.errors import ConflictError, DomainError

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

SECRET_MESSAGE = "db password is hunter2"


class BudgetExhausted(DomainError):
    status_code = 402
    code = "budget_exhausted"
    default_detail = "The monthly budget is used up."


class OwnerSerializer(serializers.Serializer[dict[str, Any]]):
    email = serializers.EmailField()


class ItemSerializer(serializers.Serializer[dict[str, Any]]):
    sku = serializers.CharField(max_length=5)


class ProbeApi(APIView):
    class InputSerializer(serializers.Serializer[dict[str, Any]]):
        name = serializers.CharField(min_length=3)
        owner = OwnerSerializer()
        items = ItemSerializer(many=True)
        tags = serializers.ListField(child=serializers.IntegerField(), required=False)

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if attrs["name"] == "taken":
                raise serializers.ValidationError("This name is taken.")
            return attrs

    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return Response({"name": serializer.validated_data["name"]}, status=201)


class RaisingApi(APIView):
    """Raises whatever the URL names, the way a service would."""

    authentication_classes = []
    permission_classes = [AllowAny]

    def get(self, request: Request, what: str) -> Response:
        if what == "budget":
            raise BudgetExhausted(remaining_usd="0.00")
        if what == "conflict":
            raise ConflictError("The task already finished.")
        if what == "http404":
            raise Http404("no such row in table secret_things")
        if what == "denied":
            raise PermissionDenied
        raise RuntimeError(SECRET_MESSAGE)


def plain_django_view(request: HttpRequest) -> HttpResponse:
    raise RuntimeError(SECRET_MESSAGE)


urlpatterns = [
    path("api/v1/probe/", ProbeApi.as_view()),
    path("api/v1/raise/<str:what>/", RaisingApi.as_view()),
    path("plain-boom/", plain_django_view),
    *config_urls.urlpatterns,
]
handler404 = config_urls.handler404
handler500 = config_urls.handler500

VALID = {"name": "widget", "owner": {"email": "a@example.com"}, "items": [{"sku": "A1"}], "tags": [1, 2]}


def assert_shape(response: Any, status: int, code: str, type_: str = "client_error") -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body: dict[str, Any] = json.loads(response.content)
    assert body["type"] == type_
    assert body["code"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def test_valid_request_passes(tenant) -> None:
    assert tenant.client.post("/api/v1/probe/", VALID, format="json").status_code == 201


def test_validation_errors_are_flattened_with_dotted_attrs(tenant) -> None:
    data = {"name": "ab", "owner": {"email": "nope"}, "items": [{"sku": "A1"}, {"sku": "TOOLONG"}], "tags": [1, "x"]}
    body = assert_shape(tenant.client.post("/api/v1/probe/", data, format="json"), 400, "invalid", "validation_error")
    assert body["detail"] == "The request is invalid."
    assert body["errors"] == [
        {"attr": "name", "code": "min_length", "detail": "Ensure this field has at least 3 characters."},
        {"attr": "owner.email", "code": "invalid", "detail": "Enter a valid email address."},
        {"attr": "items.1.sku", "code": "max_length", "detail": "Ensure this field has no more than 5 characters."},
        {"attr": "tags.1", "code": "invalid", "detail": "A valid integer is required."},
    ]


def test_missing_fields_and_object_level_errors(tenant) -> None:
    body = assert_shape(tenant.client.post("/api/v1/probe/", {}, format="json"), 400, "invalid", "validation_error")
    assert {(e["attr"], e["code"]) for e in body["errors"]} == {
        ("name", "required"),
        ("owner", "required"),
        ("items", "required"),
    }
    taken = {**VALID, "name": "taken"}
    body = assert_shape(tenant.client.post("/api/v1/probe/", taken, format="json"), 400, "invalid", "validation_error")
    assert body["errors"] == [{"attr": None, "code": "invalid", "detail": "This name is taken."}]


def test_missing_key_is_401(anon_client: APIClient) -> None:
    response = anon_client.post("/api/v1/probe/", VALID, format="json")
    body = assert_shape(response, 401, "not_authenticated")
    assert "errors" not in body
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("url", ["/api/v1/no-such-route/", "/api/v1/no-such-route", "/nowhere"])
def test_unknown_route_is_json_404(tenant, url: str) -> None:
    body = assert_shape(tenant.client.get(url), 404, "not_found")
    assert body == {"type": "client_error", "code": "not_found", "detail": "Not found."}


def test_unknown_route_under_the_real_urlconf_is_json_404(tenant, settings) -> None:
    settings.ROOT_URLCONF = "config.urls"
    assert_shape(tenant.client.get("/api/v1/definitely/not/here/"), 404, "not_found")


def test_wrong_method_is_405(tenant) -> None:
    body = assert_shape(tenant.client.get("/api/v1/probe/"), 405, "method_not_allowed")
    assert body["detail"] == 'Method "GET" not allowed.'


def test_body_over_the_limit_is_413_before_it_is_read(tenant) -> None:
    big = {**VALID, "name": "x" * (settings.API_MAX_BODY_BYTES + 1)}
    body = assert_shape(tenant.client.post("/api/v1/probe/", big, format="json"), 413, "body_too_large")
    assert str(settings.API_MAX_BODY_BYTES) in body["detail"]


def test_body_at_the_limit_is_read(tenant) -> None:
    payload = json.dumps({**VALID, "name": ""})
    filler = "x" * (settings.API_MAX_BODY_BYTES - len(payload))
    data = json.dumps({**VALID, "name": filler})
    assert len(data) == settings.API_MAX_BODY_BYTES
    response = tenant.client.post("/api/v1/probe/", data, content_type="application/json")
    assert response.status_code == 201


def test_non_json_body_is_415(tenant) -> None:
    response = tenant.client.post("/api/v1/probe/", "name=widget", content_type="text/plain")
    body = assert_shape(response, 415, "unsupported_media_type")
    assert "text/plain" in body["detail"]


def test_malformed_json_is_400_parse_error(tenant) -> None:
    response = tenant.client.post("/api/v1/probe/", '{"name": "widget",', content_type="application/json")
    body = assert_shape(response, 400, "parse_error")
    assert "errors" not in body


@pytest.mark.parametrize(
    ("what", "status", "code", "detail"),
    [
        ("budget", 402, "budget_exhausted", "The monthly budget is used up."),
        ("conflict", 409, "conflict", "The task already finished."),
        ("http404", 404, "not_found", "Not found."),
        ("denied", 403, "permission_denied", "You do not have permission to perform this action."),
    ],
)
def test_domain_and_django_exceptions_map_to_their_status(what: str, status: int, code: str, detail: str) -> None:
    body = assert_shape(APIClient().get(f"/api/v1/raise/{what}/"), status, code)
    assert body["detail"] == detail
    assert "secret_things" not in json.dumps(body)


def test_domain_error_extra_fields_are_part_of_the_body() -> None:
    body = APIClient().get("/api/v1/raise/budget/").json()
    assert body == {
        "type": "client_error",
        "code": "budget_exhausted",
        "detail": "The monthly budget is used up.",
        "remaining_usd": "0.00",
    }


@pytest.mark.parametrize("url", ["/api/v1/raise/boom/", "/plain-boom/"])
def test_unexpected_exception_is_a_bare_json_500(url: str) -> None:
    client = Client(raise_request_exception=False)
    response = client.get(url)
    body = assert_shape(response, 500, "server_error", "server_error")
    assert body == {"type": "server_error", "code": "server_error", "detail": "Internal server error."}
    text = response.content.decode()
    for leak in (SECRET_MESSAGE, "Traceback", "RuntimeError", settings.SECRET_KEY):
        assert leak not in text
    assert response["X-Request-ID"]
